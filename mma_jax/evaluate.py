"""Evaluation: batched greedy decoding with the training mask, scored per benchmark.

  python -m mma_jax.evaluate --config=configs/sft_mma.py --workdir=DIR --benchmark=pope \\
      --data=POPE.tsv [--out=DIR]       # decode with the workdir's latest checkpoint, then score
  python -m mma_jax.evaluate score --benchmark=pope --predictions=FILE.tsv   # re-score, no model

A benchmark (mma_jax.benchmarks.REGISTRY) is a table of rows: a VLMEvalKit TSV
(mma_jax.data.vlmeval_tsv) or, for `synthetic`, the Task's test split. A TSV row becomes a
normalized record whose human turn is "<image>\\n" + the benchmark's fixed prompt; every record
goes through the Task's own chat template with drop_last_answer, into fixed-shape prompt batches
(one compile). Writes <out>/<benchmark>_predictions.tsv (the table's columns minus image, plus
prediction: VLMEvalKit's format) and <out>/<benchmark>_results.json (metrics next to the
prompt, the extraction rule and the decoding settings); <out> defaults to <workdir>/eval.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Callable, Iterable, Mapping

import jax
from absl import logging

from mma_jax import benchmarks, decode, distributed, sharding
from mma_jax import config as config_lib
from mma_jax.data import chat, grain_pipeline, vlmeval_tsv
from mma_jax.data.vlmeval_tsv import BadRow, Table


def predict(model, params, prompt_batches: Iterable, tokenizer, kind: str,
            max_new_tokens: int):
  """Greedy answers for batches of (prompt arrays, answers, question types).

  Yields (prediction strings, answers, types) per batch; rows whose answers are None are
  padding rows added to keep one compiled shape, and are dropped.
  """
  for prompt, answers, types in prompt_batches:
    tokens, lengths = decode.generate(model, params, prompt, kind=kind,
                                      max_new_tokens=max_new_tokens, eos_id=tokenizer.stop_ids,
                                      pad_id=tokenizer.pad_id)
    tokens, lengths = distributed.to_numpy((tokens, lengths))  # also from other processes
    texts = [tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths)]
    keep = [i for i, a in enumerate(answers) if a is not None]
    yield [texts[i] for i in keep], [answers[i] for i in keep], [types[i] for i in keep]


def evaluate(model, params, prompt_batches: Iterable, tokenizer, kind: str,
             max_new_tokens: int, chance: Mapping[str, float]):
  """Decode every batch and score. Returns (metrics dict, list of (pred, answer, type))."""
  preds, answers, types = [], [], []
  for p, a, t in predict(model, params, prompt_batches, tokenizer, kind, max_new_tokens):
    preds += p; answers += a; types += t
  return benchmarks.shapes_score(preds, answers, types, chance), list(zip(preds, answers, types))


# --- benchmark tables -> records ---------------------------------------------------------------

def synthetic_table(task) -> tuple[Table, Callable[[int], dict]]:
  """The Task's test split as a table (index, id, question, answer, category) + its records."""
  records = list(task.source("test"))
  rows = [{"index": str(i), "id": r["id"], "answer": r["conversations"][-1]["value"],
           "question": r["conversations"][-2]["value"].replace(chat.IMAGE_TAG, " ").strip(),
           "category": r["question_type"]} for i, r in enumerate(records)]
  table = Table("synthetic:test", ["index", "id", "question", "answer", "category"], rows,
                list(range(1, len(rows) + 1)))
  return table, records.__getitem__


def tsv_record(table: Table, bench: benchmarks.Benchmark, image_size: int, i: int) -> dict:
  """Row i as a normalized record: one human turn of images + the benchmark's prompt."""
  images = vlmeval_tsv.images(table, i, image_size)
  question = (chat.IMAGE_TAG + "\n") * len(images) + bench.build_prompt(table.rows[i])
  return {"id": table.rows[i]["index"], "images": images,
          "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": ""}]}


def read_benchmark(bench: benchmarks.Benchmark, path: str, skip_bad_rows: bool,
                   counter) -> tuple[Table, int]:
  """A VLMEvalKit TSV, with rotated copies added for a circular benchmark that has none.

  Returns (table, orphans): for a circular benchmark, copies (index g + k * 1e6) whose main row
  g is not in the table (absent, or skipped as bad) are dropped and counted in `orphans` (0
  otherwise): their question cannot be scored, so they are not decoded. Rows read from the
  file keep their own line; an added copy reports its main row's line."""
  table = vlmeval_tsv.read_table(path, bench.required, skip_bad_rows, counter)
  if not bench.circular:
    return table, 0
  stride = benchmarks.CIRCULAR_STRIDE
  rows = benchmarks.circularize(table.rows)  # the file's rows first, in order, then copies
  line_of = {int(r["index"]): n for r, n in zip(table.rows, table.lines)}
  lines = table.lines + [line_of[int(r["index"]) % stride] for r in rows[len(table.rows):]]
  if len(rows) > len(table.rows):
    logging.info("%s has no circular copies; added %d rotated copies.", path,
                 len(rows) - len(table.rows))
  mains = {int(r["index"]) for r in rows if int(r["index"]) < stride}
  keep = [i for i, r in enumerate(rows) if int(r["index"]) % stride in mains]
  orphans = len(rows) - len(keep)
  if orphans:
    logging.warning("%s: dropped %d circular copies whose main row (index mod 1e6) is not in "
                    "the table (missing or skipped as bad); their questions are not scored.",
                    path, orphans)
  table.rows, table.lines = [rows[i] for i in keep], [lines[i] for i in keep]
  return table, orphans


def default_data_path(bench: benchmarks.Benchmark) -> str:
  """$LMUData/<VLMEvalKit name>.tsv, where VLMEvalKit keeps its benchmark files."""
  if not bench.vlmeval_name:
    raise ValueError(f"Benchmark {bench.name!r} needs --data=FILE.tsv (VLMEvalKit TSV format).")
  root = os.environ.get("LMUData", os.path.expanduser("~/LMUData"))
  return os.path.join(root, f"{bench.vlmeval_name}.tsv")


def prompt_encoder(tokenizer, tokens_per_image: int, order: str, image_size: int):
  """record -> evaluation prompt: chat.encode with the tokenizer's chat template, stopping
  after the assistant header. Prompts are conversations whatever the training stage."""
  return functools.partial(chat.encode, tok=tokenizer, tokens_per_image=tokens_per_image,
                           order=order, stage="sft", drop_last_answer=True,
                           image_size=image_size)


def decode_table(model, params, table: Table, record_of: Callable[[int], dict], encode,
                 tokenizer, config, counter) -> dict[int, str]:
  """Row position -> predicted text, decoding config.eval.batch_size rows at a time.

  Rows that cannot be read or do not fit the prompt shape raise BadRow naming the file and
  row, or with config.eval.skip_bad_rows are counted on `counter` and left out.
  """
  e = config.eval
  predictions = {}
  for start in range(0, len(table.rows), e.batch_size):
    examples = []
    for i in range(start, min(start + e.batch_size, len(table.rows))):
      try:
        ex = encode(record_of(i))
        n, k = len(ex["tokens"]), len(ex["images"])
        if n > e.prompt_length or k > e.max_images:
          raise BadRow(f"{table.where(i)}: the prompt has {n} tokens and {k} images; prompts "
                       f"hold config.eval.prompt_length={e.prompt_length} tokens and "
                       f"config.eval.max_images={e.max_images} images. Raise them, "
                       f"{vlmeval_tsv.SKIP_HINT}.")
      except chat.BadRecord as err:
        vlmeval_tsv.skip_or_raise(BadRow(f"{table.where(i)}: {err}"), e.skip_bad_rows, counter)
        continue
      except BadRow as err:
        vlmeval_tsv.skip_or_raise(err, e.skip_bad_rows, counter)
        continue
      examples.append((ex, i, i))  # the row position rides in the answer slot
    batches = grain_pipeline.prompt_batches(
        examples, batch_size=e.batch_size, prompt_length=e.prompt_length,
        max_images=e.max_images, image_size=config.model.vision.image_size)
    for texts, positions, _ in predict(model, params, batches, tokenizer, config.mask,
                                       e.max_new_tokens):
      predictions.update(zip(positions, texts))
  return predictions


# --- the two commands --------------------------------------------------------------------------

def _results(bench: benchmarks.Benchmark, rows, skipped: int, **extra) -> dict:
  return {"benchmark": bench.name, "prompt": bench.prompt, "extraction": bench.extraction,
          "rows": len(rows), "skipped_rows": skipped, **extra, "metrics": bench.metrics(rows)}


def run(config, workdir: str, benchmark: str, data: str = "", out: str = "") -> dict:
  """Decode a benchmark with the latest checkpoint in workdir and score it; writes the
  predictions TSV and the results JSON under `out` (default <workdir>/eval). Returns the
  results dict."""
  # Here, not at the top: train imports this module, and `score` needs neither the model nor
  # the Task's TFDS (TensorFlow) import.
  from mma_jax import checkpoint, train
  from mma_jax import task as task_lib
  from mma_jax.models import vlm

  config_lib.validate(config)
  bench = benchmarks.get(benchmark)
  counter = grain_pipeline.SkipCounter()
  extra = {}  # read-time counts for the results JSON
  task = task_lib.Task(config, workdir)
  if bench.build_prompt is None:
    if config.data.source != "shapes":
      raise ValueError(f"--benchmark={bench.name} is the built-in shapes test split, but "
                       f"config.data.source={config.data.source!r}; evaluate a benchmark TSV.")
    table, record_of = synthetic_table(task)
  else:
    data = data or default_data_path(bench)
    table, orphans = read_benchmark(bench, data, config.eval.skip_bad_rows, counter)
    if bench.circular:
      extra["dropped_circular_copies"] = orphans
    record_of = lambda i: tsv_record(table, bench, task.image_size, i)
  model_cfg = train._model_config(config, task.tokenizer.vocab_size)
  model = vlm.VLM(model_cfg)
  mesh = sharding.make_mesh(config.mesh.shape)
  rules = sharding.make_rules(config.mesh.rules)
  with sharding.use(mesh, rules):  # as in training: the same parameter layout
    batch = task.example_batch(model_cfg.tokens_per_image)
    abstract = jax.eval_shape(lambda: model.init(
        jax.random.key(0), {k: batch[k] for k in train.MODEL_KEYS}, "causal")["params"])
    shardings = sharding.logical_shardings(abstract, mesh, rules)
    # Restore straight into that layout: no parameters are initialised only to be replaced.
    template = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        sharding.unbox(abstract), shardings)
    params, step = checkpoint.load_params(workdir, template)
    encode = prompt_encoder(task.tokenizer, model_cfg.tokens_per_image, task.eval_order(),
                            task.image_size)
    predictions = decode_table(model, {"params": params}, table, record_of, encode,
                               task.tokenizer, config, counter)
  if counter.count:
    logging.warning("%d bad rows were skipped (config.eval.skip_bad_rows).", counter.count)
  rows = [dict(r, prediction=predictions[i]) for i, r in enumerate(table.rows) if i in predictions]
  out = out or os.path.join(workdir, "eval")
  tsv_path = os.path.join(out, f"{bench.name}_predictions.tsv")
  results = _results(
      bench, rows, counter.count, data=data or table.path, workdir=os.path.abspath(workdir),
      checkpoint_step=step, predictions=tsv_path,
      decoding={"method": "greedy", "max_new_tokens": config.eval.max_new_tokens,
                "mask": config.mask, "order": task.eval_order(),
                "prompt_length": config.eval.prompt_length, "image_size": task.image_size},
      **extra)
  if jax.process_index() == 0:  # every process holds all predictions; one writes them
    vlmeval_tsv.write_predictions(tsv_path, table.columns, rows)
    with open(os.path.join(out, f"{bench.name}_results.json"), "w") as f:
      json.dump(results, f, indent=1)
  return results


def score_file(benchmark: str, predictions: str, skip_bad_rows: bool = False) -> dict:
  """Score an existing predictions table (ours or VLMEvalKit's, TSV) without a model."""
  bench = benchmarks.get(benchmark)
  counter = grain_pipeline.SkipCounter()
  table = vlmeval_tsv.read_table(predictions, bench.required + ("prediction",), skip_bad_rows,
                                 counter)
  return _results(bench, table.rows, counter.count, predictions=os.path.abspath(predictions))


def format_results(results: dict) -> str:
  """The prompt and extraction rule, then one line per metric."""
  dropped = results.get("dropped_circular_copies")
  lines = [f"benchmark   {results['benchmark']} ({results['rows']} rows scored, "
           f"{results['skipped_rows']} bad rows skipped"
           + (f", {dropped} circular copies without their main row dropped" if dropped else "")
           + ")",
           f"prompt      {results['prompt']}", f"extraction  {results['extraction']}"]
  width = max((len(k) for k in results["metrics"]), default=0)
  lines += [f"  {k:<{width}}  {v:.3f}" for k, v in results["metrics"].items()]
  return "\n".join(lines)


def main(argv):
  from absl import app, flags

  f = flags.FLAGS
  if len(argv) > 2 or (len(argv) == 2 and argv[1] != "score"):
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; the only subcommand is 'score'.")
  if not f.benchmark:
    raise app.UsageError(f"--benchmark is required: one of {sorted(benchmarks.REGISTRY)}.")
  if len(argv) == 2:
    if not f.predictions:
      raise app.UsageError("score needs --predictions=FILE.tsv.")
    skip = bool(f.config and f.config.eval.skip_bad_rows)
    results = score_file(f.benchmark, f.predictions, skip)
  else:
    if f.config is None or not f.workdir:
      raise app.UsageError("--config and --workdir are required (or use the 'score' command).")
    results = run(f.config, f.workdir, f.benchmark, f.data, f.out)
  print(format_results(results))


if __name__ == "__main__":
  # Flags are defined only when run as a program: train imports this module as a library.
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file of the trained run.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "", "The run's workdir: its latest checkpoint is evaluated.")
  flags.DEFINE_string("benchmark", "", f"One of {sorted(benchmarks.REGISTRY)}.")
  flags.DEFINE_string("data", "", "The benchmark's VLMEvalKit TSV; default "
                      "$LMUData/<VLMEvalKit name>.tsv.")
  flags.DEFINE_string("out", "", "Where predictions and results go; default <workdir>/eval.")
  flags.DEFINE_string("predictions", "", "score: the predictions TSV to score.")
  app.run(main)
