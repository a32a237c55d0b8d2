"""The paper's ablation at small scale: PT, then SFT per variant x seed, and a report.

  python -m mma_jax.study --workdir=runs/study [--seeds=5] [--steps=N] [--pt_steps=N] \
      [--variants=causal,reversed,dot,causal_2x,mma,prefix] [--jobs=N] [--timing_seconds=2] \
      [--config.KEY=VALUE ...]

Every SFT run starts from the same PT checkpoint, on the same data and model, for the same
number of steps; DOT trains `steps` in T&I and then `steps` in I&T, so `causal_2x` (causal I&T
for 2 x steps) is its fair control. The exception is `mma_pt_prompt` (the paper's open question,
MMA in PT): `mma`'s SFT from a second PT run, `pt_prompt`, trained like the first but under mask
mma with an instruction after the images (PT_RUNS), so it differs from `mma` by the PT alone.
A seed sets config.seed and the data shuffling (config.data.shuffle_seed); the parameters all
come from PT. Layout of --workdir:

  data/                the built-in benchmark (TFDS), shared by every run
  pt/                  the PT run
  pt_prompt/           the second PT run (mask mma, PT_PROMPT after the images), planned only
                       with --variants including mma_pt_prompt
  runs/VARIANT/seedS/  one SFT run (results.json, train_log.jsonl, checkpoints, TensorBoard)
  timing.json          the step time of each variant, timed alone (see below)
  report.md, results.csv, study.png      the comparison
  mechanism/           the mechanism pictures (mma_jax.mechanism) of the seed-0 mma and causal runs

A run whose results.json reports its full step count is reused; any other run resumes from its
checkpoint, so rerunning the command after an interruption continues the study.

--jobs=N trains up to N runs at once, the PT runs before the SFT runs, each in its own process
(`--run=NAME` of the same command; its output goes to study_run.log in the run's directory). A
tiny model's train step keeps about one CPU core busy, so on a CPU machine N = the number of
cores; on one accelerator, 1.

Statistics. Each (variant, metric) gets its mean and a 95% confidence interval (Student t with
n - 1 degrees of freedom over the n seeds; none with one seed). Each variant is compared with
causal I&T by a paired t-test over seeds; for each metric the family of these comparisons
(every variant but causal that has a p) is corrected by Holm-Bonferroni, and the report gives
raw and adjusted p. The verdict compares MMA with every other variant on overall accuracy, its
own family, Holm-corrected too; only adjusted p < 0.05 counts as significant.

Step time. Runs trained at once (--jobs > 1), or next to anything else on the machine, slow each
other down, so the training logs' step times are not a fair comparison. After training, this
process times each variant alone, one after another: that variant's train step (built as
mma_jax.train.loop builds it, fresh parameters: the time does not depend on their values) on one
batch already on the device, in intervals of several steps for about --timing_seconds; the step
time is the minimum over intervals of seconds per step (another job can only add time). It
excludes data loading. The times are kept in timing.json (keyed by the run config, device and
JAX version; delete the file to time again). With --timing_seconds=0 the report falls back to
the minimum logging interval of each run's train_log.jsonl, and says so.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mma_jax import config as config_lib
from mma_jax import cli, logs, tokens

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO, "configs")
BASELINE = "causal"


@dataclasses.dataclass(frozen=True)
class Variant:
  config_file: str    # under the configs directory
  step_factor: int    # config.train.steps = step_factor x --steps
  label: str
  pt: str = "pt"      # the PT run (PT_RUNS) its SFT starts from


# An instruction for MMA in PT: captions have no prompt text, so without one MMA equals causal
# in PT. Only words of the shapes benchmark (easy and hard), which the word-level tokenizer knows.
PT_PROMPT = "what is there ?"
# PT run -> keys set on configs/pt.py for it. The study sets them, so an override of one is
# refused whenever that run is planned.
PT_RUNS = {
    "pt": {},
    "pt_prompt": {"mask": "mma", "data.pt_prompt": PT_PROMPT},
}


VARIANTS = {
    "causal": Variant("sft_causal.py", 1, "causal I&T"),
    "reversed": Variant("sft_reversed.py", 1, "reversed T&I (causal)"),
    "dot": Variant("sft_dot.py", 1, "DOT: T&I then I&T (2x steps)"),
    "causal_2x": Variant("sft_causal.py", 2, "causal I&T, 2x steps (DOT's control)"),
    "mma": Variant("sft_mma.py", 1, "MMA I&T"),
    "prefix": Variant("sft_prefix.py", 1, "prefix-LM I&T"),
    # The paper's open question on multi-turn grouping: images see every turn's question. A
    # KV cache cannot decode this (see mma_jax/masks.py): an upper bound, not a method.
    "mma_conversation": Variant("sft_mma_conversation.py", 1,
                                "MMA across turns (upper bound, not decodable)"),
    # The paper's open question on MMA in PT: mma's SFT, from the PT run where the images saw
    # an instruction, so the difference to mma is the PT alone.
    "mma_pt_prompt": Variant("sft_mma.py", 1, "MMA I&T after PT with a prompt (MMA in PT)",
                             pt="pt_prompt"),
}
# Set by the study for every run; an override of one of them would break the comparison.
FIXED_KEYS = ("stage", "mask", "data.order", "init_from", "seed", "data.shuffle_seed",
              "train.steps")


@dataclasses.dataclass
class Run:
  name: str           # a PT run's name (PT_RUNS) or VARIANT/seedS
  variant: str        # '' for PT
  seed: int
  config: Any         # ml_collections.ConfigDict
  workdir: str

  @property
  def total_steps(self) -> int:
    return self.config.train.steps * len(tokens.phases(self.config.data.order))


# --- configs ----------------------------------------------------------------------------------

def load_config(path: str, *args):
  """get_config(*args) of a config file (configs/*.py; from_hf.py takes a directory)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path} not found; pass --configs_dir=<repo>/configs.")
  spec = importlib.util.spec_from_file_location(f"_study_config_{os.path.basename(path)[:-3]}",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def apply_overrides(config, overrides: Mapping[str, Any]):
  """Set dotted keys ('optim.lr') in place, to values of the keys' types (the command line's
  --config.KEY=VALUE are parsed by ml_collections.config_flags against the base config)."""
  for key, value in overrides.items():
    if key in FIXED_KEYS:
      raise ValueError(f"--config.{key} is set by the study for each run; use --steps, "
                       "--pt_steps, --seeds or --variants instead.")
    _set(config, key, value)
  return config


def _set(config, key: str, value: Any) -> None:
  """config[key] = value for a dotted key that must exist, to a value of its type."""
  *path, leaf = key.split(".")
  node = config
  for part in path:
    if part not in node:
      raise KeyError(f"--config.{key}: no key {part!r} in the config (see mma_jax/config.py).")
    node = node[part]
  if leaf not in node:
    raise KeyError(f"--config.{key}: no key {leaf!r} in the config (see mma_jax/config.py).")
  try:
    node[leaf] = value
  except (ValueError, TypeError) as e:
    raise ValueError(f"--config.{key}={value!r}: {e}") from None


def plan(workdir: str, seeds: int, variants: Sequence[str], steps: int | None = None,
         pt_steps: int | None = None, overrides: Mapping[str, Any] | None = None,
         configs_dir: str = CONFIGS_DIR) -> list[Run]:
  """The runs of the study, PT first: each PT run (PT_RUNS order) that a variant starts from,
  then VARIANT/seedS per variant and seed. steps / pt_steps None = the config files' own."""
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f"Unknown variants {unknown}; choose from {sorted(VARIANTS)}.")
  if BASELINE not in variants:
    raise ValueError(f"--variants must include {BASELINE!r}: every difference is against it.")
  if seeds < 1:
    raise ValueError(f"--seeds={seeds} must be at least 1.")
  workdir = os.path.abspath(workdir)
  overrides = dict(overrides or {})
  def make(config_file):
    c = apply_overrides(load_config(os.path.join(configs_dir, config_file)), overrides)
    if "data.dir" not in overrides:  # one copy of the benchmark for every run
      c.data.dir = os.path.join(workdir, "data")
    return c

  runs = []
  needed = {VARIANTS[v].pt for v in variants}
  for name in (n for n in PT_RUNS if n in needed):  # the same steps, overrides and seed 0
    for key in sorted(set(PT_RUNS[name]) & set(overrides) - set(FIXED_KEYS)):
      users = ", ".join(v for v in variants if VARIANTS[v].pt == name)
      raise ValueError(f"--config.{key} is set by the study for the PT run {name!r} (of "
                       f"--variants {users}); leave it out, or leave {users} out of --variants.")
    pt = make("pt.py")
    for key, value in PT_RUNS[name].items():
      _set(pt, key, value)
    if pt_steps:
      pt.train.steps = pt_steps
    runs.append(Run(name, "", 0, pt, os.path.join(workdir, name)))
  for v in variants:
    for s in range(seeds):
      c = make(VARIANTS[v].config_file)
      c.train.steps = VARIANTS[v].step_factor * (steps or c.train.steps)
      c.seed = c.data.shuffle_seed = s
      c.init_from = os.path.join(workdir, VARIANTS[v].pt)  # its PT run's workdir
      runs.append(Run(f"{v}/seed{s}", v, s, c, os.path.join(workdir, "runs", v, f"seed{s}")))
  return runs


def finished(run: Run) -> bool:
  """True when the run's results.json reports its full step count."""
  path = os.path.join(run.workdir, "results.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get("step") == run.total_steps


# --- statistics -------------------------------------------------------------------------------

CONFIDENCE = 0.95
ALPHA = 0.05
STEP_METRICS = ("step_time_s", "step_time_rel")
TIMED = "timed alone"
LOGGED = "training log"


def paired_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
  """Paired t-test of a against b (matched by seed): (mean difference, t, two-sided p).

  With fewer than two pairs t and p are NaN; with identical differences t is ±inf (p = 0)
  unless they are all 0 (t, p NaN).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top (scipy comes with jax)
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"Paired samples need the same seeds; got {a.size} and {b.size} values.")
  diff = float(np.mean(a - b)) if a.size else float("nan")
  if a.size < 2:
    return diff, float("nan"), float("nan")
  with np.errstate(divide="ignore", invalid="ignore"):
    res = stats.ttest_rel(a, b)
  return diff, float(res.statistic), float(res.pvalue)


def mean_ci(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float, float]:
  """(mean, low, high): the Student-t interval mean ± t(level, n - 1) x std / sqrt(n).

  One value has no interval (low, high NaN); identical values give low = high = mean.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x = np.asarray(values, np.float64)
  mean = float(np.mean(x)) if x.size else float("nan")
  if x.size < 2:
    return mean, float("nan"), float("nan")
  half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * np.std(x, ddof=1) / np.sqrt(x.size))
  return mean, mean - half, mean + half


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p, in the input's order; rejecting where adjusted p < alpha keeps
  the family-wise error rate at alpha.

  The family is the finite p (NaN: no test, passed through). With them sorted p(1) <= ... <=
  p(m), adjusted p(i) = min(1, max over j <= i of (m - j + 1) p(j)).
  """
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  tested = np.flatnonzero(np.isfinite(p))
  order = tested[np.argsort(p[tested], kind="stable")]
  m = order.size
  running = 0.0
  for i, k in enumerate(order):
    running = max(running, (m - i) * p[k])  # the max keeps the adjusted p monotone
    out[k] = min(1.0, running)
  return out.tolist()


def metric_names(metrics: Mapping[str, float]) -> list[str]:
  """accuracy/all, accuracy per question type (benchmark order), f1/exist: those present."""
  from mma_jax.data.shapes import generate  # pylint: disable=g-import-not-at-top
  types = [t for t in generate.QUESTION_TYPES if f"accuracy/{t}" in metrics]
  types += sorted(k.split("/", 1)[1] for k in metrics
                  if k.startswith("accuracy/") and k.split("/", 1)[1] not in types + ["all"])
  names = ["accuracy/all"] + [f"accuracy/{t}" for t in types] + ["f1/exist"]
  return [n for n in names if n in metrics]


def step_time(workdir: str) -> float:
  """Fallback step time: the minimum seconds per train step over train_log.jsonl's logging
  intervals, the first (warm-up) interval left out. Contention only adds time, so the minimum
  is the least confounded of them, but runs trained at once still share the machine."""
  path = os.path.join(workdir, "train_log.jsonl")
  times = []
  if os.path.exists(path):
    with open(path) as f:
      times = [r["step_time"] for r in map(json.loads, f) if "step_time" in r]
  times = times[1:] if len(times) > 1 else times
  return float(np.min(times)) if times else float("nan")


def collect(runs: Sequence[Run]) -> dict:
  """variant -> {"steps", "seeds", "metrics": {name: [per seed]}, "step_time": [per seed, from
  the training logs], "chance": {name: value}}, read from the runs' results.json and
  train_log.jsonl. run_study adds "timing" (time_variants) when the variants were timed."""
  out = {}
  for run in runs:
    if not run.variant:
      continue
    with open(os.path.join(run.workdir, "results.json")) as f:
      metrics = json.load(f)["metrics"]
    v = out.setdefault(run.variant, {"steps": run.total_steps, "seeds": [], "metrics": {},
                                     "step_time": [], "chance": {}})
    v["seeds"].append(run.seed)
    for name in metric_names(metrics):
      v["metrics"].setdefault(name, []).append(float(metrics[name]))
    v["step_time"].append(step_time(run.workdir))
    v["chance"] = {k.replace("chance/", "accuracy/"): float(x) for k, x in metrics.items()
                   if k.startswith("chance/")}
  return out


def _step_times(results: Mapping[str, dict], variant: str) -> tuple[list, list, str]:
  """(seconds per step, ratios to causal, source) of a variant: the timing pass's one value
  when it timed both the variant and causal, else the per-seed training-log values."""
  r, base = results[variant], results[BASELINE]
  if "timing" in r and "timing" in base:
    t, t0 = r["timing"]["seconds_per_step"], base["timing"]["seconds_per_step"]
    return [t], [t / t0], TIMED
  seeds = [s for s in r["seeds"] if s in base["seeds"]]
  mine = [r["step_time"][r["seeds"].index(s)] for s in seeds]
  return mine, [m / base["step_time"][base["seeds"].index(s)] for m, s in zip(mine, seeds)], \
      LOGGED


def summarize(results: Mapping[str, dict]) -> list[dict]:
  """One row per (variant, metric): n, mean, std (ddof 1), the 95% interval (ci_low, ci_high;
  NaN with one value), values, and the paired difference to causal I&T with its raw p and its
  Holm-adjusted p over the metric's family (holm_m comparisons: every other variant's with a p).

  Metrics 'step_time_s' (seconds per step) and 'step_time_rel' (÷ causal) come from the timing
  pass (one value per variant) or, labelled in 'step_time_source', the training logs (per seed).
  """
  base = results[BASELINE]
  rows = []
  for variant, r in results.items():
    seeds = [base["seeds"].index(s) for s in r["seeds"] if s in base["seeds"]]
    mine = [r["seeds"].index(base["seeds"][i]) for i in seeds]
    seconds, ratio, source = _step_times(results, variant)
    for name, values in list(r["metrics"].items()) + [("step_time_s", seconds),
                                                       ("step_time_rel", ratio)]:
      values = np.asarray(values, np.float64)
      mean, low, high = mean_ci(values)
      row = {"variant": variant, "label": VARIANTS[variant].label, "steps": r["steps"],
             "metric": name, "n": int(values.size), "mean": mean,
             "std": float(np.std(values, ddof=1)) if values.size > 1 else 0.0,
             "ci_low": low, "ci_high": high, "values": values.tolist(),
             "delta_vs_causal": float("nan"), "p_vs_causal": float("nan"),
             "p_holm_vs_causal": float("nan"), "holm_m": 0,
             "step_time_source": source if name in STEP_METRICS else ""}
      if name not in STEP_METRICS and variant != BASELINE:
        a = [values[j] for j in mine]
        b = [base["metrics"][name][i] for i in seeds]
        row["delta_vs_causal"], _, row["p_vs_causal"] = paired_test(a, b)
      rows.append(row)
  for name in {r["metric"] for r in rows} - set(STEP_METRICS):
    family = [r for r in rows if r["metric"] == name and r["variant"] != BASELINE]
    m = sum(np.isfinite(r["p_vs_causal"]) for r in family)
    for r, adjusted in zip(family, holm([r["p_vs_causal"] for r in family])):
      r["p_holm_vs_causal"], r["holm_m"] = adjusted, int(m)
  return rows


# --- step time, timed alone -------------------------------------------------------------------

def _timing_key(config) -> str:
  """What the step time depends on: the run config less what differs between seeds and step
  budgets, the device and the JAX version."""
  import jax  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(config)
  c.seed = c.data.shuffle_seed = 0
  c.train.steps, c.init_from = 1, ""
  text = json.dumps([c.to_json_best_effort(sort_keys=True), jax.devices()[0].device_kind,
                     jax.device_count(), jax.__version__])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def time_train_step(config, workdir: str, seconds: float) -> dict:
  """Seconds per train step of `config`'s model, mask and batch, measured in this process.

  The step is jit_train_step as the trainer builds it, from fresh parameters (the time does not
  depend on their values) on one batch of the run's last phase put on the device once. After a
  compile-and-warm-up call, intervals of k steps (k: about a tenth of `seconds` each) run until
  `seconds` have passed, at least 3; the result is the minimum over intervals of the interval's
  time / k, since anything else running can only add time.
  """
  # pylint: disable=g-import-not-at-top (TensorFlow is slow to import; reports need none)
  import jax
  from mma_jax import sharding
  from mma_jax.data import task as task_lib
  from mma_jax.models import build, vlm
  from mma_jax.train import optimizer
  from mma_jax.train import step as step_lib
  c = config
  task = task_lib.Task(c, workdir)
  model_cfg = build.model_config(c, task.tokenizer.vocab_size)
  model = vlm.VLM(model_cfg)
  mesh, rules = sharding.make_mesh(c.mesh.shape), sharding.make_rules(c.mesh.rules)
  phases = tokens.phases(c.data.order)
  with sharding.use(mesh, rules):
    abstract = build.param_shardings(model_cfg, mesh, rules)[0]
    opt, _ = optimizer.make(c.optim, c.train.steps * len(phases), abstract)
    trainable = optimizer.trainable_mask(abstract, c.optim.freeze)
    shardings = jax.tree_util.tree_map(
        lambda x: x.sharding, step_lib.abstract_state(model_cfg, opt, mesh, rules))
    state = step_lib.init_state(model, opt, c.seed, shardings, mesh, rules)
    train_step = step_lib.jit_train_step(model, opt, c.mask, c.train.grad_accum, trainable,
                                         shardings, mesh)
    iterator = task.train_iterator(phases[-1], model_cfg.tokens_per_image)
    try:
      batch = sharding.put_batch(next(iterator), mesh)
    finally:
      getattr(iterator, "close", lambda: None)()  # no prefetch thread outlives the timing

    def interval(k: int) -> float:
      nonlocal state
      t0 = time.perf_counter()
      for _ in range(k):
        state, _ = train_step(state, batch)  # the state is donated: carry it on
      jax.block_until_ready(state)
      return (time.perf_counter() - t0) / k

    interval(1)  # compiles
    k = max(1, int(seconds / 10 / interval(1)))
    times, end = [], time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
      times.append(interval(k))
  return {"source": TIMED, "seconds_per_step": float(np.min(times)),
          "median_seconds_per_step": float(np.median(times)), "steps_per_interval": k,
          "intervals": len(times)}


def time_variants(workdir: str, runs: Sequence[Run], seconds: float) -> dict[str, dict]:
  """variant -> time_train_step of its first run, one variant after another; reused from
  workdir/timing.json when timed before for the same config, device and JAX version."""
  path = os.path.join(workdir, "timing.json")
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = json.load(f)
  out = {}
  for run in runs:
    if not run.variant or run.variant in out:
      continue
    key = _timing_key(run.config)
    if cache.get(run.variant, {}).get("key") != key:
      logging.info("Study: timing the %s train step alone (%.1f s).", run.variant, seconds)
      cache[run.variant] = dict(time_train_step(run.config, run.workdir, seconds), key=key)
      with open(path, "w") as f:
        json.dump(cache, f, indent=1)
    out[run.variant] = {k: v for k, v in cache[run.variant].items() if k != "key"}
  return out


# --- report -----------------------------------------------------------------------------------

def _fmt(x: float, digits: int = 3) -> str:
  return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


def _short(metric: str) -> str:
  return {"accuracy/all": "all", "f1/exist": "F1 exist"}.get(metric, metric.split("/", 1)[-1])


def _mean_ci(row: Mapping, digits: int = 3) -> str:
  """'mean ± half-width' of the 95% interval; 'mean (no CI)' when there is none."""
  if not np.isfinite(row["ci_low"]):
    return f"{_fmt(row['mean'], digits)} (no CI)"
  return f"{row['mean']:.{digits}f} ± {(row['ci_high'] - row['ci_low']) / 2:.{digits}f}"


def _p(p: float) -> str:
  return "n/a" if not np.isfinite(p) else f"{p:.3g}"


def _verdict(results) -> list[str]:
  """Plain sentences: does MMA beat causal I&T and the other baselines on overall accuracy?

  The family is MMA against each other variant on overall accuracy; a win needs a positive
  difference with Holm-adjusted p < ALPHA over that family.
  """
  if "mma" not in results:
    return ["MMA was not part of this study (--variants), so there is no verdict on it."]
  overall = "accuracy/all"
  n = len(results["mma"]["seeds"])
  others = [v for v in results if v != "mma"]
  tests = []
  for other in others:
    seeds = [s for s in results["mma"]["seeds"] if s in results[other]["seeds"]]
    pick = lambda v: [results[v]["metrics"][overall][results[v]["seeds"].index(s)] for s in seeds]
    diff, _, p = paired_test(pick("mma"), pick(other))
    tests.append((other, len(seeds), diff, p))
  adjusted = holm([p for *_, p in tests])
  m = int(np.sum(np.isfinite([p for *_, p in tests])))
  lines, wins = [], 0
  for (other, k, diff, p), q in zip(tests, adjusted):
    name = VARIANTS[other].label
    how = "is ahead by" if diff > 0 else "is behind by" if diff < 0 else "ties at"
    stats = f"paired p = {_p(p)}, Holm-adjusted p = {_p(q)} over {k} seeds"
    if not np.isfinite(p):
      lines.append(f"- MMA − {name}: {diff:+.3f} overall accuracy; with {k} seed(s) (or "
                   "identical differences) there is no significance test, so no claim either way.")
    elif diff > 0 and q < ALPHA:
      wins += 1
      lines.append(f"- MMA beats {name}: {diff:+.3f} overall accuracy, {stats}.")
    elif diff > 0 and p < ALPHA:
      lines.append(f"- MMA does **not** significantly beat {name}: it is ahead by {diff:.3f} "
                   f"overall accuracy with {stats}: p < {ALPHA} alone, but **not significant "
                   "after correction**.")
    elif diff < 0 and q < ALPHA:
      lines.append(f"- MMA is significantly **worse** than {name}: behind by {-diff:.3f} overall "
                   f"accuracy, {stats}.")
    else:
      lines.append(f"- MMA does **not** significantly beat {name}: it {how} {abs(diff):.3f} "
                   f"overall accuracy, {stats}.")
  head = (f"MMA beats all {len(lines)} baselines at this scale ({n} seeds, Holm-corrected)."
          if wins == len(lines) else
          f"At this scale MMA significantly beats {wins} of {len(lines)} baselines ({n} seed(s); "
          f"adjusted p < {ALPHA}); the claim is not reproduced where it does not.")
  family = (f"Family: MMA against each of the {len(others)} other variants on overall accuracy"
            + (f" ({m} with a test); p adjusted by Holm–Bonferroni over those {m}." if m else
               "; none has a test, so there is nothing to correct."))
  return [head, "", family, ""] + lines


def write_report(workdir: str, runs: Sequence[Run], results: Mapping[str, dict],
                 mechanism_result: Mapping | None = None) -> dict[str, str]:
  """report.md, results.csv and study.png under workdir; returns their paths."""
  rows = summarize(results)
  paths = {"markdown": os.path.join(workdir, "report.md"),
           "csv": os.path.join(workdir, "results.csv"),
           "plot": os.path.join(workdir, "study.png")}
  _write_csv(paths["csv"], rows)
  metrics = metric_names(results[BASELINE]["metrics"])
  by = {(r["variant"], r["metric"]): r for r in rows}
  md = (_setup_lines(runs, len(results[BASELINE]["seeds"]))
        + _accuracy_table(results, by, metrics) + _difference_table(results, by, metrics)
        + ["", "## Verdict", ""] + _verdict(results)
        + ["", _step_time_note(results, by) + " DOT and causal 2x also take twice the steps.",
           "", "![results](study.png)"]
        + _mechanism_lines(mechanism_result))
  with open(paths["markdown"], "w") as f:
    f.write("\n".join(md) + "\n")
  plot(results, rows, metrics, paths["plot"])
  return paths


def _write_csv(path: str, rows: Sequence[dict]) -> None:
  fields = ["variant", "label", "steps", "metric", "n", "mean", "std", "values",
            "delta_vs_causal", "p_vs_causal", "ci_low", "ci_high", "p_holm_vs_causal", "holm_m",
            "step_time_source"]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow(dict(r, values=";".join(repr(x) for x in r["values"])))


def _setup_lines(runs: Sequence[Run], n_seeds: int) -> list[str]:
  """The title and what was trained on what."""
  pt = runs[0].config
  sft = next(r for r in runs if r.variant == BASELINE).config
  m = sft.model.llm
  more = ""
  for r in runs[1:]:  # the PT runs past the first: what they change, who starts from them
    if not r.variant:
      users = dict.fromkeys(VARIANTS[x.variant].label for x in runs
                            if x.variant and VARIANTS[x.variant].pt == r.name)
      more += (f" (and a second PT run, {r.name}: the same with "
               + " and ".join(f"{k} = {v!r}" for k, v in PT_RUNS[r.name].items())
               + f", for {', '.join(users)})")
  return ["# The MMA ablation at small scale", "",
          f"PT {pt.train.steps} steps{more}, then SFT {sft.train.steps} steps per order from "
          f"{'its PT' if more else 'that'} checkpoint (DOT and causal 2x: "
          f"{2 * sft.train.steps}); "
          f"{n_seeds} seed(s) per variant (seed = config.seed and the data "
          f"shuffling); batch {sft.train.batch_size} x {sft.data.pack_length} tokens; LLM "
          f"{m.layers} layers x {m.hidden}; train/test {sft.data.train_size}/"
          f"{sft.data.test_size} records of the built-in shapes benchmark "
          f"({sft.data.get('difficulty', 'easy')}).", ""]


def _accuracy_table(results, by, metrics) -> list[str]:
  """Mean ± CI per variant and metric, step time, and the chance row."""
  n_seeds = len(results[BASELINE]["seeds"])
  md = [f"## Test accuracy (mean ± {CONFIDENCE:.0%} confidence interval over seeds)", "",
        f"± is the half-width of a Student-t {CONFIDENCE:.0%} interval over the n seeds (n − 1 "
        "degrees of freedom); results.csv has its ends (ci_low, ci_high) and the std."
        + (" With one seed there is no interval ('no CI')." if n_seeds < 2 else ""), "",
        "| variant | steps | " + " | ".join(_short(x) for x in metrics)
        + " | step time (ms) | ÷ causal |",
        "|" + " --- |" * (len(metrics) + 4)]
  for v in results:
    cells = [_mean_ci(by[v, x]) for x in metrics]
    ms = dict(by[v, "step_time_s"], **{k: 1e3 * by[v, "step_time_s"][k]
                                       for k in ("mean", "ci_low", "ci_high")})
    if ms["step_time_source"] == TIMED:  # one measurement per variant: no interval to give
      cells += [_fmt(ms["mean"], 2), _fmt(by[v, "step_time_rel"]["mean"], 2)]
    else:
      cells += [_mean_ci(ms, 2), _mean_ci(by[v, "step_time_rel"], 2)]
    md.append(f"| {VARIANTS[v].label} | {results[v]['steps']} | " + " | ".join(cells) + " |")
  chance = results[BASELINE]["chance"]
  md.append("| chance (majority answer) | | "
            + " | ".join(_fmt(chance.get(x, float("nan"))) for x in metrics) + " | | |")
  return md


def _difference_table(results, by, metrics) -> list[str]:
  """Each variant minus causal I&T with raw and Holm-adjusted p, and the family size."""
  others = [v for v in results if v != BASELINE]
  md = ["", "## Difference to causal I&T (paired over seeds: raw p of a paired t-test → "
        "Holm-adjusted p)", "",
        f"Family, for each metric: the comparisons with causal I&T of "
        f"{', '.join(VARIANTS[v].label for v in others) or 'no other variant'} — those with a "
        "test (a single seed or identical differences give none); m below. Holm–Bonferroni "
        f"keeps the chance of any false difference in a metric's family under {ALPHA}; "
        f"**bold**: adjusted p < {ALPHA}.", "",
        "| variant | " + " | ".join(_short(x) for x in metrics) + " |",
        "|" + " --- |" * (len(metrics) + 1)]

  def diff_cell(r):
    text = (f"{r['delta_vs_causal']:+.3f} (p {_p(r['p_vs_causal'])} → "
            f"{_p(r['p_holm_vs_causal'])})")
    return f"**{text}**" if r["p_holm_vs_causal"] < ALPHA else text

  for v in others:
    md.append(f"| {VARIANTS[v].label} | " + " | ".join(diff_cell(by[v, x]) for x in metrics)
              + " |")
  if others:
    md.append("| Holm family size m | " + " | ".join(str(by[others[0], x]["holm_m"])
                                                    for x in metrics) + " |")
  return md


def _step_time_note(results, by) -> str:
  """How the step-time column was measured."""
  sources = {by[v, "step_time_rel"]["step_time_source"] for v in results}
  if sources == {TIMED}:
    t = results[BASELINE]["timing"]
    return (f"Step time is **{TIMED}**: after training, this process ran each variant's train "
            "step (fresh parameters, one batch already on the device; no data loading) by "
            "itself, one variant after another, in intervals of several steps for a few seconds "
            f"(causal: {t['intervals']} intervals of {t['steps_per_interval']} steps), and took "
            "the minimum over intervals of seconds per step: other jobs on the machine can only "
            "add time, and no run trained in parallel enters it. One value per variant, so no "
            "interval; the ratio divides it by causal's.")
  return (f"Step time is from the **{LOGGED}** (the variants were not all timed alone: "
          "--timing_seconds=0): per run, the minimum seconds per step over train_log.jsonl's "
          "logging intervals (the first left out), divided by the causal run's of the same "
          "seed. Runs trained at once (--jobs > 1) or beside other jobs share the machine, so "
          "these times can be confounded.")


def _mechanism_lines(mechanism_result) -> list[str]:
  """The drift table and the pictures, when the mechanism pictures were made."""
  if not mechanism_result:
    return []
  layers = len(next(iter(mechanism_result["drift"].values())))
  md = ["", "## Mechanism (seed 0)", "",
        "Cosine distance between the image tokens' hidden states when the same image is asked "
        "two different questions, mean over pairs, per layer (0 = input embeddings):", "",
        "| run | " + " | ".join(str(i) for i in range(layers)) + " |",
        "|" + " --- |" * (1 + layers)]
  for label, d in mechanism_result["drift"].items():
    md.append(f"| {label} | " + " | ".join(f"{np.mean(x):.2e}" for x in d) + " |")
  return md + ["", "Under causal the image tokens come before the question, so their states are "
               "identical whatever is asked (distance exactly 0); under MMA they read the "
               "question.", ""] + [f"![{os.path.basename(p)}](mechanism/{os.path.basename(p)})"
                                   for p in mechanism_result["files"]]


def plot(results, rows, metrics, path: str) -> None:
  """Bars: mean ± 95% interval per metric and variant (none with one seed); the step-time
  ratios."""
  from mma_jax import mechanism
  by = {(r["variant"], r["metric"]): r for r in rows}
  half = lambda r: (r["ci_high"] - r["ci_low"]) / 2 if np.isfinite(r["ci_low"]) else 0.0
  variants = list(results)
  fig = mechanism.figure(figsize=(12, 4))
  ax, ax_t = fig.subplots(1, 2, width_ratios=[4, 1])
  width = 0.8 / len(variants)
  x = np.arange(len(metrics))
  for n, v in enumerate(variants):
    ax.bar(x + n * width, [by[v, m]["mean"] for m in metrics], width,
           yerr=[half(by[v, m]) for m in metrics], label=VARIANTS[v].label, capsize=2)
    t = by[v, "step_time_rel"]
    ax_t.bar(n, t["mean"], yerr=half(t), color=f"C{n}", capsize=2)
  chance = results[BASELINE]["chance"]
  ax.scatter(x + 0.4 - width / 2, [chance.get(m, np.nan) for m in metrics], marker="_", s=400,
             color="k", label="chance", zorder=3)
  # Many metrics (the hard benchmark has 8): slanted names do not overlap.
  ax.set_xticks(x + 0.4 - width / 2, [_short(m) for m in metrics], rotation=30, ha="right",
                fontsize=8)
  ax.set_ylabel(f"test score (mean ± {CONFIDENCE:.0%} CI over seeds)")
  ax.set_ylim(0, 1.05)
  ax.legend(fontsize=7, ncol=2)
  ax_t.axhline(1.0, color="k", lw=0.8)
  ax_t.set_xticks(range(len(variants)), variants, rotation=45, fontsize=7)
  source = by[BASELINE, "step_time_rel"]["step_time_source"]
  ax_t.set_ylabel(f"train-step time ÷ causal ({source})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


# --- the study --------------------------------------------------------------------------------

def run_study(workdir: str, seeds: int = 5, variants: Sequence[str] = tuple(VARIANTS),
              steps: int | None = None, pt_steps: int | None = None,
              overrides: Mapping[str, Any] | None = None, configs_dir: str = CONFIGS_DIR,
              mechanism_examples: int = 3, jobs: int = 1,
              timing_seconds: float = 2.0) -> dict | None:
  """Run (or reuse) every run of the plan, time each variant's step alone, write the report.

  jobs > 1 trains that many runs at once in subprocesses (the PT runs first, only with each
  other). timing_seconds: per variant, for time_variants once all training has ended; 0 = step
  times from the training logs instead.

  Returns {"results": collect(...), "rows": summarize(...), "paths": report files,
  "trained": names of the runs trained now}, or None when a run was stopped (SIGTERM).
  """
  runs = plan(workdir, seeds, variants, steps, pt_steps, overrides, configs_dir)
  todo = []
  for run in runs:
    if finished(run):
      logging.info("Study: %s is finished (%s/results.json); reused.", run.name, run.workdir)
    else:
      todo.append(run)
  if jobs > 1:
    command = _command(workdir, seeds, variants, steps, pt_steps, overrides, configs_dir)
    # The PT runs first: every SFT run starts from one of them.
    pts = [r for r in todo if not r.variant]
    if len(pts) > 1:  # they train at once: their shared benchmark files are written here first,
      _prepare_data(pts[0])  # as two processes writing them would collide
    trained = _train_in_processes(pts, jobs, command)
    if trained is not None:
      more = _train_in_processes([r for r in todo if r.variant], jobs, command)
      trained = None if more is None else trained + more
  else:
    trained = _train_here(todo, len(runs))
  if trained is None:
    logging.warning("Study stopped; rerun the same command to continue.")
    return None
  results = collect(runs)
  if timing_seconds > 0:  # every subprocess has ended: nothing else of the study runs now
    for v, t in time_variants(os.path.abspath(workdir), runs, timing_seconds).items():
      results[v]["timing"] = t
  mech = None
  if mechanism_examples and {"mma", BASELINE} <= set(variants) and \
      next(r for r in runs if r.variant).config.data.source == "shapes":
    from mma_jax import mechanism
    first = {r.variant: r for r in reversed(runs) if r.variant in ("mma", BASELINE)}
    mech = mechanism.from_workdirs(
        {v: (first[v].config, first[v].workdir) for v in ("mma", BASELINE)},
        os.path.join(os.path.abspath(workdir), "mechanism"), mechanism_examples)
  paths = write_report(os.path.abspath(workdir), runs, results, mech)
  logging.info("Study report: %s", paths["markdown"])
  return {"results": results, "rows": summarize(results), "paths": paths, "trained": trained,
          "mechanism": mech}


def _train_here(todo: Sequence[Run], total: int) -> list[str] | None:
  """Trains the runs one after another in this process; None when one was stopped."""
  # pylint: disable-next=g-import-not-at-top (TensorFlow is slow to import; reports need none)
  from mma_jax.train.loop import train_and_evaluate
  trained = []
  for run in todo:
    logging.info("Study: %s (%d of %d runs left) in %s.", run.name, len(todo) - len(trained),
                 total, run.workdir)
    train_and_evaluate(run.config, run.workdir)
    if not finished(run):  # stopped by SIGTERM: its checkpoint is kept
      return None
    trained.append(run.name)
  return trained


def _prepare_data(run: Run) -> None:
  """Writes the run's benchmark files (config.data.dir, shared by every run) unless present."""
  from mma_jax.data import task as task_lib  # pylint: disable=g-import-not-at-top
  task_lib.Task(run.config, run.workdir)


def _command(workdir, seeds, variants, steps, pt_steps, overrides, configs_dir) -> list[str]:
  """This study's command line; `--run=NAME` is appended per run."""
  cmd = [sys.executable, "-m", "mma_jax.study", f"--workdir={os.path.abspath(workdir)}",
         f"--seeds={seeds}", f"--variants={','.join(variants)}", f"--configs_dir={configs_dir}"]
  cmd += [f"--steps={steps}"] if steps else []
  cmd += [f"--pt_steps={pt_steps}"] if pt_steps else []
  return cmd + [f"--config.{k}={v}" for k, v in (overrides or {}).items()]


def _train_in_processes(todo: Sequence[Run], jobs: int, command: list[str]) -> list[str] | None:
  """Trains the runs, up to `jobs` at once, each in a subprocess; None when stopped by SIGTERM.

  A SIGTERM is passed on to the running runs (they save a checkpoint) and starts no new one.
  A run that fails stops the study once the others ended, naming its log.
  """
  pending, active, trained, failed = list(todo), {}, [], []
  stop = []
  def forward(signum, frame):  # pylint: disable=unused-argument
    stop.append(signum)
    for proc, _, _ in active.values():
      proc.send_signal(signal.SIGTERM)
  previous = signal.signal(signal.SIGTERM, forward)
  try:
    while active or (pending and not stop and not failed):
      while pending and len(active) < jobs and not stop and not failed:
        run = pending.pop(0)
        os.makedirs(run.workdir, exist_ok=True)
        log = open(os.path.join(run.workdir, "study_run.log"), "a")
        logging.info("Study: %s started (%d waiting); log %s.", run.name, len(pending), log.name)
        active[run.name] = (subprocess.Popen(command + [f"--run={run.name}"], stdout=log,
                                             stderr=subprocess.STDOUT), log, run)
      time.sleep(1.0)
      for name, (proc, log, run) in list(active.items()):
        if proc.poll() is None:
          continue
        log.close()
        del active[name]
        if finished(run):
          trained.append(name)
          logging.info("Study: %s finished.", name)
        elif not stop:
          failed.append(f"{name} (exit {proc.returncode}; see {log.name})")
  finally:
    signal.signal(signal.SIGTERM, previous)
  if failed:
    raise RuntimeError(f"Study runs failed: {', '.join(failed)}. Fix the cause and rerun the "
                       "same command; finished runs are reused.")
  return None if stop else trained


def _train_one(name: str) -> None:
  """--run=NAME: trains that run of this command's plan; exit 1 when it was stopped."""
  from mma_jax.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  runs = {r.name: r for r in plan(_WORKDIR.value, _SEEDS.value, _VARIANTS.value, _STEPS.value,
                                  _PT_STEPS.value, _overrides(), _CONFIGS_DIR.value)}
  if name not in runs:
    raise app.UsageError(f"--run={name} is not in the study's plan: {sorted(runs)}.")
  train_and_evaluate(runs[name].config, runs[name].workdir)
  sys.exit(0 if finished(runs[name]) else 1)


_WORKDIR = flags.DEFINE_string("workdir", None, "The study's directory.", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per variant (>= 5 for the intervals and "
                               "corrected tests to decide anything).")
_STEPS = flags.DEFINE_integer("steps", None, "SFT steps per order (default: the SFT configs').")
_PT_STEPS = flags.DEFINE_integer("pt_steps", None, "PT steps (default: configs/pt.py's).")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Any of {list(VARIANTS)}.")
_CONFIGS_DIR = flags.DEFINE_string("configs_dir", CONFIGS_DIR, "Where pt.py and sft_*.py are.")
_MECHANISM = flags.DEFINE_integer("mechanism_examples", 3, "Images for the mechanism pictures "
                                  "(0 = none).")
_JOBS = flags.DEFINE_integer("jobs", 1, "Runs trained at once, each in its own process.")
_TIMING = flags.DEFINE_float("timing_seconds", 2.0, "Seconds of train steps timed per variant "
                              "after training, alone (0 = step times from the training logs).")
_RUN = flags.DEFINE_string("run", None, "Train only this run of the plan (used by --jobs).")


def _define_config_flag() -> None:
  """--config.KEY=VALUE: typed against the base config; applied to every run (PT and SFT).
  Defined under mma_jax.cli's guard, as the overrides are checked right here."""
  config_flags.DEFINE_config_dict(
      "config", config_lib.base_config(), "Overrides for every run, e.g. "
      "--config.optim.lr=1e-3.", lock_config=True)


def _overrides() -> dict[str, Any]:
  """The --config.KEY=VALUE given on the command line, typed."""
  return config_flags.get_override_values(flags.FLAGS["config"])


def main(argv):
  logs.quiet_libraries()  # libraries' INFO lines only with --verbosity=1
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _RUN.value:
    _train_one(_RUN.value)
  if _JOBS.value < 1:
    raise app.UsageError(f"--jobs={_JOBS.value} must be at least 1.")
  if _TIMING.value < 0:
    raise app.UsageError(f"--timing_seconds={_TIMING.value} must be 0 (no timing) or more.")
  out = run_study(_WORKDIR.value, _SEEDS.value, _VARIANTS.value, _STEPS.value, _PT_STEPS.value,
                  _overrides(), _CONFIGS_DIR.value, _MECHANISM.value, _JOBS.value,
                  _TIMING.value)
  if out is None:
    sys.exit(1)
  with open(out["paths"]["markdown"]) as f:
    print(f.read())


if __name__ == "__main__":
  cli.run_absl(main, _define_config_flag)
