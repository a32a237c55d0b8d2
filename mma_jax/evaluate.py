"""Evaluation: batched greedy decoding with the training mask, scored per benchmark.

  python -m mma_jax.evaluate --config=configs/sft_mma.py --workdir=DIR --benchmark=pope \\
      --data=POPE.tsv [--out=DIR]       # decode with the workdir's latest checkpoint, then score
  python -m mma_jax.evaluate score --benchmark=pope --predictions=FILE.tsv   # re-score, no model
  ... [--rule=official|strict]   # a benchmark's other scoring rule; default vlmevalkit

A benchmark (mma_jax.benchmarks.REGISTRY) is a table of rows: a VLMEvalKit TSV
(mma_jax.data.vlmeval_tsv) or, for `synthetic` / `records`, a split of the Task's own data.
run_benchmark is the one path: the training loop's evaluations call it too. A TSV row becomes a
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


# --- benchmark tables -> records ---------------------------------------------------------------

def split_table(task, split: str) -> tuple[Table, Callable[[int], dict]]:
  """A split of the Task's own records as a table (index, id, question, answer, category =
  question type, or source name for imported records) + a function giving row i's record."""
  records, categories = task.eval_records(split)
  rows = [{"index": str(i), "id": r["id"], "answer": r["conversations"][-1]["value"],
           "question": r["conversations"][-2]["value"].replace(chat.IMAGE_TAG, " ").strip(),
           "category": c} for i, (r, c) in enumerate(zip(records, categories))]
  table = Table(f"{task.name}:{split}", ["index", "id", "question", "answer", "category"], rows,
                list(range(1, len(rows) + 1)))
  return table, lambda i: task.with_pixels(records[i])


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


# --- one evaluation path: training, the CLI and re-scoring ---------------------------------------

def own_benchmark(task) -> benchmarks.Benchmark:
  """The benchmark that scores the Task's own splits: 'synthetic' or 'records'."""
  return benchmarks.get("synthetic" if task.name == "shapes" else "records")


def _results(bench: benchmarks.Benchmark, rows, skipped: int, rule: str = "", **extra) -> dict:
  extraction, metrics = bench.scorer(rule)
  return {"benchmark": bench.name, "rule": rule or benchmarks.DEFAULT_RULE,
          "prompt": bench.prompt, "extraction": extraction, "rows": len(rows),
          "skipped_rows": skipped, **extra, "metrics": metrics(rows)}


def results_name(bench: benchmarks.Benchmark, rule: str = "") -> str:
  """<bench>_results.json; <bench>_<rule>_results.json for a rule other than the default."""
  rule = "" if rule == benchmarks.DEFAULT_RULE else rule
  return f"{bench.name}_{rule + '_' if rule else ''}results.json"


def _write(out: str, bench: benchmarks.Benchmark, results: dict, columns=None, rows=None):
  """<out>/results_name(bench, results' rule) and the predictions TSV when rows are given,
  written by process 0."""
  if not out or jax.process_index() != 0:  # every process holds all predictions; one writes
    return
  os.makedirs(out, exist_ok=True)
  if rows is not None:
    vlmeval_tsv.write_predictions(results["predictions"], columns, rows)
  with open(os.path.join(out, results_name(bench, results["rule"])), "w") as f:
    json.dump(results, f, indent=1)


def run_benchmark(model, params, task, config, benchmark: str, data: str = "",
                  split: str = "test", out: str = "", **extra) -> dict:
  """Decode one benchmark with `params` and score it; the one path of every evaluation.

  benchmark: a REGISTRY name. The Task's own benchmark ('synthetic' / 'records') reads its
  `split`; any other reads a VLMEvalKit TSV (`data`, default $LMUData/<name>.tsv), with
  rotated copies added for a circular one. Prompts: chat.prompt_encoder in the task's
  evaluation order. Scoring: config.eval.rule ('' = vlmevalkit). Writes
  <out>/<bench>_predictions.tsv and <out>/<bench>_results.json unless out is ''.
  Returns the results dict (metrics next to the prompt, rule, extraction and decoding).
  """
  bench = benchmarks.get(benchmark)
  counter = grain_pipeline.SkipCounter()
  if bench.build_prompt is None:
    if bench is not own_benchmark(task):
      raise ValueError(f"--benchmark={bench.name} scores the built-in data's {split} split, "
                       f"but config.data.source={config.data.source!r}; evaluate "
                       f"{own_benchmark(task).name!r} or a benchmark TSV.")
    table, record_of = split_table(task, split)
  else:
    data = data or default_data_path(bench)
    table, orphans = read_benchmark(bench, data, config.eval.skip_bad_rows, counter)
    if bench.circular:
      extra["dropped_circular_copies"] = orphans
    record_of = lambda i: tsv_record(table, bench, task.image_size, i)
  tokens_per_image = model.cfg.tokens_per_image
  encode = chat.prompt_encoder(task.tokenizer, tokens_per_image, task.eval_order(),
                               task.image_size)
  predictions = decode_table(model, params, table, record_of, encode, task.tokenizer, config,
                             counter)
  if counter.count:
    logging.warning("%s: %d bad rows were skipped (config.eval.skip_bad_rows).", bench.name,
                    counter.count)
  rows = [dict(r, prediction=predictions[i]) for i, r in enumerate(table.rows) if i in predictions]
  results = _results(
      bench, rows, counter.count, config.eval.rule, data=data or table.path,
      predictions=os.path.join(out, f"{bench.name}_predictions.tsv") if out else "",
      decoding={"method": "greedy", "max_new_tokens": config.eval.max_new_tokens,
                "mask": config.mask, "order": task.eval_order(),
                "prompt_length": config.eval.prompt_length, "image_size": task.image_size},
      **extra)
  # A few (prediction, answer, category) triples to read next to the score.
  results["examples"] = [[r["prediction"], r["answer"], r.get("category", "")] for r in rows[:20]]
  _write(out, bench, results, table.columns, rows)
  return results


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
  task = task_lib.Task(config, workdir)
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
    return run_benchmark(model, {"params": params}, task, config, benchmark, data,
                         out=out or os.path.join(workdir, "eval"),
                         workdir=os.path.abspath(workdir), checkpoint_step=step)


def score_file(benchmark: str, predictions: str, skip_bad_rows: bool = False, rule: str = "",
               out: str = "") -> dict:
  """Score an existing predictions table (ours or VLMEvalKit's, TSV) without a model; writes
  <out>/<bench>_results.json (out default: the table's folder; 'none' writes nothing)."""
  bench = benchmarks.get(benchmark)
  bench.scorer(rule)  # an unknown rule fails before the table is read
  counter = grain_pipeline.SkipCounter()
  table = vlmeval_tsv.read_table(predictions, bench.required + ("prediction",), skip_bad_rows,
                                 counter)
  results = _results(bench, table.rows, counter.count, rule,
                     predictions=os.path.abspath(predictions))
  out = out or os.path.dirname(os.path.abspath(predictions))
  if out != "none":
    # A model run's results JSON there keeps what only it knows (decoding, checkpoint).
    path = os.path.join(out, results_name(bench, rule))
    if os.path.isfile(path):
      with open(path) as f:
        results = {**json.load(f), **results}
    _write(out, bench, results)
  return results


def format_results(results: dict) -> str:
  """The prompt and extraction rule, then one line per metric."""
  dropped = results.get("dropped_circular_copies")
  lines = [f"benchmark   {results['benchmark']} ({results['rows']} rows scored, "
           f"{results['skipped_rows']} bad rows skipped"
           + (f", {dropped} circular copies without their main row dropped" if dropped else "")
           + ")",
           f"rule        {results.get('rule', benchmarks.DEFAULT_RULE)}",
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
    rule = f.rule or (f.config.eval.rule if f.config else "")
    results = score_file(f.benchmark, f.predictions, skip, rule, f.out)
  else:
    if f.config is None or not f.workdir:
      raise app.UsageError("--config and --workdir are required (or use the 'score' command).")
    if f.rule:
      with f.config.unlocked():
        f.config.eval.rule = f.rule
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
  flags.DEFINE_string("out", "", "Where predictions and results go; default <workdir>/eval "
                      "(score: the predictions' folder; 'none' writes no results JSON).")
  flags.DEFINE_string("rule", "", f"Scoring rule: {benchmarks.DEFAULT_RULE} (default) or a "
                      "benchmark's other rule (vqav2: official; mmbench: strict); overrides "
                      "config.eval.rule.")
  flags.DEFINE_string("predictions", "", "score: the predictions TSV to score.")
  app.run(main)
