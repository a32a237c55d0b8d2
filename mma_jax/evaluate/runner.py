"""Evaluation: batched greedy decoding with the training mask, scored per benchmark.

The command line is mma_jax.evaluate.__main__. A benchmark (scoring.REGISTRY) is a table of
rows: a VLMEvalKit TSV (vlmeval_tsv) or, for `shapes` / `records`, a split of the Task's own data.
run_benchmark is the one path: the training loop's evaluations call it too. A TSV row becomes a
normalized record whose human turn is "<image>\\n" + the benchmark's fixed prompt; every record
goes through the Task's own chat template with drop_last_answer, into fixed-shape prompt batches
(one compile). Writes <out>/<benchmark>_predictions.tsv (the table's columns minus image, plus
prediction: VLMEvalKit's format) and <out>/<benchmark>_results.json (metrics next to the
prompt, the extraction rule and the decoding settings); <out> defaults to <workdir>/eval.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import jax
from absl import logging

from mma_jax import checkpoint, distributed, sharding
from mma_jax.data import chat, pipeline
from mma_jax.data import task as task_lib
from mma_jax.evaluate import decode, prompts, scoring, vlmeval_tsv
from mma_jax.evaluate.vlmeval_tsv import BadTableRow, Table
from mma_jax.models import build, lora, vlm
from mma_jax.tokens import eval_order


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


def read_benchmark(bench: scoring.Benchmark, path: str, skip_bad_rows: bool,
                   counter) -> tuple[Table, int]:
  """A VLMEvalKit TSV, with rotated copies added for a circular benchmark that has none.

  Returns (table, orphans): for a circular benchmark, copies (index g + k * 1e6) whose main row
  g is not in the table (absent, or skipped as bad) are dropped and counted in `orphans` (0
  otherwise): their question cannot be scored, so they are not decoded. Rows read from the
  file keep their own line; an added copy reports its main row's line."""
  table = vlmeval_tsv.read_table(path, bench.required, skip_bad_rows, counter)
  if not bench.circular:
    return table, 0
  stride = scoring.CIRCULAR_STRIDE
  rows = scoring.circularize(table.rows)  # the file's rows first, in order, then copies
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


def default_data_path(bench: scoring.Benchmark) -> str:
  """$LMUData/<VLMEvalKit name>.tsv, where VLMEvalKit keeps its benchmark files."""
  if not bench.vlmeval_name:
    raise ValueError(f"Benchmark {bench.name!r} needs --data=FILE.tsv (VLMEvalKit TSV format).")
  root = os.environ.get("LMUData", os.path.expanduser("~/LMUData"))
  return os.path.join(root, f"{bench.vlmeval_name}.tsv")


def decode_table(model, params, table: Table, record_of: Callable[[int], dict], encode,
                 tokenizer, config, counter) -> dict[int, str]:
  """Row position -> predicted text, decoding config.eval.batch_size rows at a time.

  Rows that cannot be read or do not fit the prompt shape raise BadTableRow naming the file and
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
          raise BadTableRow(f"{table.where(i)}: the prompt has {n} tokens and {k} images; prompts "
                       f"hold config.eval.prompt_length={e.prompt_length} tokens and "
                       f"config.eval.max_images={e.max_images} images. Raise them, "
                       f"{vlmeval_tsv.SKIP_HINT}.")
      except chat.BadRecord as err:
        vlmeval_tsv.skip_or_raise(BadTableRow(f"{table.where(i)}: {err}"), e.skip_bad_rows, counter)
        continue
      except BadTableRow as err:
        vlmeval_tsv.skip_or_raise(err, e.skip_bad_rows, counter)
        continue
      examples.append((ex, i, i))  # the row position rides in the answer slot
    batches = prompts.prompt_batches(
        examples, batch_size=e.batch_size, prompt_length=e.prompt_length,
        max_images=e.max_images, image_size=config.model.vision.image_size)
    for texts, positions, _ in predict(model, params, batches, tokenizer, config.mask,
                                       e.max_new_tokens):
      predictions.update(zip(positions, texts))
  return predictions


# --- one evaluation path: training, the CLI and re-scoring ---------------------------------------

def own_benchmark(task) -> scoring.Benchmark:
  """The benchmark that scores the Task's own splits: 'shapes' or 'records'."""
  return scoring.get(task.name)


def _results(bench: scoring.Benchmark, rows, skipped: int, rule: str = "", **extra) -> dict:
  extraction, metrics = bench.scorer(rule)
  return {"benchmark": bench.name, "rule": rule or scoring.DEFAULT_RULE,
          "prompt": bench.prompt, "extraction": extraction, "rows": len(rows),
          "skipped_rows": skipped, **extra, "metrics": metrics(rows)}


def results_name(bench: scoring.Benchmark, rule: str = "") -> str:
  """<bench>_results.json; <bench>_<rule>_results.json for a rule other than the default."""
  rule = "" if rule == scoring.DEFAULT_RULE else rule
  return f"{bench.name}_{rule + '_' if rule else ''}results.json"


def _write(out: str, bench: scoring.Benchmark, results: dict, columns=None, rows=None):
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

  benchmark: a REGISTRY name. The Task's own benchmark ('shapes' / 'records') reads its
  `split`; any other reads a VLMEvalKit TSV (`data`, default $LMUData/<name>.tsv), with
  rotated copies added for a circular one. Prompts: chat.prompt_encoder in the task's
  evaluation order. Scoring: config.eval.rule ('' = vlmevalkit). Writes
  <out>/<bench>_predictions.tsv and <out>/<bench>_results.json unless out is ''.
  Returns the results dict (metrics next to the prompt, rule, extraction and decoding).
  """
  bench = scoring.get(benchmark)
  counter = pipeline.SkipCounter()
  if bench.build_prompt is None:
    if bench is not own_benchmark(task):
      raise ValueError(f"--benchmark={bench.name} scores the built-in data's {split} split, "
                       f"but config.data.source={config.data.source!r}; evaluate "
                       f"{own_benchmark(task).name!r} or a benchmark TSV.")
    table, record_of = prompts.split_table(task, split)
  else:
    data = data or default_data_path(bench)
    table, orphans = read_benchmark(bench, data, config.eval.skip_bad_rows, counter)
    if bench.circular:
      extra["dropped_circular_copies"] = orphans
    record_of = lambda i: prompts.tsv_record(table, bench, task.image_size, i, task.grids)
  tokens_per_image = model.cfg.tokens_per_image
  encode = chat.prompt_encoder(task.tokenizer, tokens_per_image, eval_order(config.data.order),
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
                "mask": config.mask, "order": eval_order(config.data.order),
                "prompt_length": config.eval.prompt_length, "image_size": task.image_size},
      **extra)
  # A few (prediction, answer, category) triples to read next to the score.
  results["examples"] = [[r["prediction"], r["answer"], r.get("category", "")] for r in rows[:20]]
  _write(out, bench, results, table.columns, rows)
  return results


def load(config, workdir: str, mesh=None, rules=None):
  """(Task, VLM, params, step) of a trained run: the latest checkpoint in workdir, restored
  straight into the training layout (config.mesh) — no parameter is initialised first. A
  LoRA run's checkpoint holds its adapters alone: its base comes from config.init_from (or
  the seed), as in training. mesh / rules: config.mesh's when not given."""
  task = task_lib.Task(config, workdir)
  model = vlm.VLM(build.model_config(config, task.tokenizer.vocab_size))
  mesh = sharding.make_mesh(config.mesh.shape) if mesh is None else mesh
  rules = sharding.make_rules(config.mesh.rules) if rules is None else rules
  target = build.restore_target(model.cfg, mesh, rules)
  if not lora.has_adapters(target):
    params, step = checkpoint.load_params(workdir, target)
    return task, model, params, step
  adapters, step = checkpoint.load_params(workdir, lora.split(target)[1])
  base, _ = build.initial_params(model, config.seed, mesh, rules, config.init_from)
  return task, model, lora.combine(lora.split(base)[0], adapters), step


def run(config, workdir: str, benchmark: str, data: str = "", out: str = "") -> dict:
  """Decode a benchmark with the latest checkpoint in workdir and score it; writes the
  predictions TSV and the results JSON under `out` (default <workdir>/eval). Returns the
  results dict."""
  scoring.get(benchmark).scorer(config.eval.rule)  # a bad name or rule fails before any work
  mesh, rules = sharding.make_mesh(config.mesh.shape), sharding.make_rules(config.mesh.rules)
  task, model, params, step = load(config, workdir, mesh, rules)
  with sharding.use(mesh, rules):  # as in training
    return run_benchmark(model, {"params": params}, task, config, benchmark, data,
                         out=out or os.path.join(workdir, "eval"),
                         workdir=os.path.abspath(workdir), checkpoint_step=step)


def score_file(benchmark: str, predictions: str, skip_bad_rows: bool = False, rule: str = "",
               out: str = "") -> dict:
  """Score an existing predictions table (ours or VLMEvalKit's, TSV) without a model; writes
  <out>/<bench>_results.json (out default: the table's folder; 'none' writes nothing)."""
  bench = scoring.get(benchmark)
  bench.scorer(rule)  # an unknown rule fails before the table is read
  counter = pipeline.SkipCounter()
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
           f"rule        {results.get('rule', scoring.DEFAULT_RULE)}",
           f"prompt      {results['prompt']}", f"extraction  {results['extraction']}"]
  width = max((len(k) for k in results["metrics"]), default=0)
  lines += [f"  {k:<{width}}  {v:.3f}" for k, v in results["metrics"].items()]
  return "\n".join(lines)


def format_metrics(metrics: dict[str, float]) -> str:
  """The shapes benchmark's table: one line per question type, accuracy vs chance."""
  types = sorted(k.split("/", 1)[1] for k in metrics if k.startswith("accuracy/"))
  lines = []
  for t in types:
    line = f"  {t:<10} accuracy {metrics[f'accuracy/{t}']:.3f}"
    if f"chance/{t}" in metrics:
      line += f"  (chance {metrics[f'chance/{t}']:.3f})"
    if t == "exist" and "f1/exist" in metrics:
      line += f"  F1 {metrics['f1/exist']:.3f}"
    lines.append(line)
  return "\n".join(lines)
