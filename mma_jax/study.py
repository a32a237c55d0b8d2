"""The paper's ablation at small scale: one PT run, then SFT per variant x seed, and a report.

  python -m mma_jax.study --workdir=runs/study [--seeds=3] [--steps=N] [--pt_steps=N] \
      [--variants=causal,reversed,dot,causal_2x,mma,prefix] [--jobs=N] [--config.KEY=VALUE ...]

Every SFT run starts from the same PT checkpoint, on the same data and model, for the same
number of steps; DOT trains `steps` in T&I and then `steps` in I&T, so `causal_2x` (causal I&T
for 2 x steps) is its fair control. A seed sets config.seed and the data shuffling
(config.data.shuffle_seed); the parameters all come from PT. Layout of --workdir:

  data/                the built-in benchmark (TFDS), shared by every run
  pt/                  the PT run
  runs/VARIANT/seedS/  one SFT run (results.json, train_log.jsonl, checkpoints, TensorBoard)
  report.md, results.csv, study.png      the comparison
  mechanism/           the mechanism pictures (mma_jax.mechanism) of the seed-0 mma and causal runs

A run whose results.json reports its full step count is reused; any other run resumes from its
checkpoint, so rerunning the command after an interruption continues the study.

--jobs=N trains up to N SFT runs at once, each in its own process (`--run=NAME` of the same
command; its output goes to runs/VARIANT/seedS/study_run.log). A tiny model's train step keeps
about one CPU core busy, so on a CPU machine N = the number of cores; on one accelerator, 1.
"""
from __future__ import annotations

import csv
import dataclasses
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
from mma_jax import logs, tokens

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO, "configs")
BASELINE = "causal"


@dataclasses.dataclass(frozen=True)
class Variant:
  config_file: str    # under the configs directory
  step_factor: int    # config.train.steps = step_factor x --steps
  label: str


VARIANTS = {
    "causal": Variant("sft_causal.py", 1, "causal I&T"),
    "reversed": Variant("sft_reversed.py", 1, "reversed T&I (causal)"),
    "dot": Variant("sft_dot.py", 1, "DOT: T&I then I&T (2x steps)"),
    "causal_2x": Variant("sft_causal.py", 2, "causal I&T, 2x steps (DOT's control)"),
    "mma": Variant("sft_mma.py", 1, "MMA I&T"),
    "prefix": Variant("sft_prefix.py", 1, "prefix-LM I&T"),
}
# Set by the study for every run; an override of one of them would break the comparison.
FIXED_KEYS = ("stage", "mask", "data.order", "init_from", "seed", "data.shuffle_seed",
              "train.steps")


@dataclasses.dataclass
class Run:
  name: str           # 'pt' or VARIANT/seedS
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
  return config


def plan(workdir: str, seeds: int, variants: Sequence[str], steps: int | None = None,
         pt_steps: int | None = None, overrides: Mapping[str, Any] | None = None,
         configs_dir: str = CONFIGS_DIR) -> list[Run]:
  """The runs of the study, PT first. steps / pt_steps None = the config files' own."""
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

  pt = make("pt.py")
  if pt_steps:
    pt.train.steps = pt_steps
  runs = [Run("pt", "", 0, pt, os.path.join(workdir, "pt"))]
  for v in variants:
    for s in range(seeds):
      c = make(VARIANTS[v].config_file)
      c.train.steps = VARIANTS[v].step_factor * (steps or c.train.steps)
      c.seed = c.data.shuffle_seed = s
      c.init_from = runs[0].workdir
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


def metric_names(metrics: Mapping[str, float]) -> list[str]:
  """accuracy/all, accuracy per question type (benchmark order), f1/exist: those present."""
  from mma_jax.data.shapes import generate  # pylint: disable=g-import-not-at-top
  types = [t for t in generate.QUESTION_TYPES if f"accuracy/{t}" in metrics]
  types += sorted(k.split("/", 1)[1] for k in metrics
                  if k.startswith("accuracy/") and k.split("/", 1)[1] not in types + ["all"])
  names = ["accuracy/all"] + [f"accuracy/{t}" for t in types] + ["f1/exist"]
  return [n for n in names if n in metrics]


def step_time(workdir: str) -> float:
  """Median seconds per train step from train_log.jsonl, the first (warm-up) interval left out."""
  path = os.path.join(workdir, "train_log.jsonl")
  times = []
  if os.path.exists(path):
    with open(path) as f:
      times = [r["step_time"] for r in map(json.loads, f) if "step_time" in r]
  times = times[1:] if len(times) > 1 else times
  return float(np.median(times)) if times else float("nan")


def collect(runs: Sequence[Run]) -> dict:
  """variant -> {"steps", "seeds", "metrics": {name: [per seed]}, "step_time": [per seed],
  "chance": {name: value}}, read from the runs' results.json and train_log.jsonl."""
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


def summarize(results: Mapping[str, dict]) -> list[dict]:
  """One row per (variant, metric): mean, std (ddof 1), values, and the paired difference to
  causal I&T with its p. Metric 'step_time_rel' is the per-seed step-time ratio to causal."""
  base = results[BASELINE]
  rows = []
  for variant, r in results.items():
    seeds = [base["seeds"].index(s) for s in r["seeds"] if s in base["seeds"]]
    mine = [r["seeds"].index(base["seeds"][i]) for i in seeds]
    ratio = [r["step_time"][j] / base["step_time"][i] for i, j in zip(seeds, mine)]
    for name, values in list(r["metrics"].items()) + [("step_time_rel", ratio)]:
      values = np.asarray(values, np.float64)
      row = {"variant": variant, "label": VARIANTS[variant].label, "steps": r["steps"],
             "metric": name, "n": int(values.size), "mean": float(np.mean(values)),
             "std": float(np.std(values, ddof=1)) if values.size > 1 else 0.0,
             "values": values.tolist(), "delta_vs_causal": float("nan"),
             "p_vs_causal": float("nan")}
      if name != "step_time_rel" and variant != BASELINE:
        a = [values[j] for j in mine]
        b = [base["metrics"][name][i] for i in seeds]
        row["delta_vs_causal"], _, row["p_vs_causal"] = paired_test(a, b)
      rows.append(row)
  return rows


# --- report -----------------------------------------------------------------------------------

def _fmt(x: float, digits: int = 3) -> str:
  return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


def _short(metric: str) -> str:
  return {"accuracy/all": "all", "f1/exist": "F1 exist"}.get(metric, metric.split("/", 1)[-1])


def _verdict(results) -> list[str]:
  """Plain sentences: does MMA beat causal I&T and the other baselines on overall accuracy?"""
  if "mma" not in results:
    return ["MMA was not part of this study (--variants), so there is no verdict on it."]
  overall = "accuracy/all"
  lines = []
  n = len(results["mma"]["seeds"])
  for other in [v for v in results if v != "mma"]:
    seeds = [s for s in results["mma"]["seeds"] if s in results[other]["seeds"]]
    pick = lambda v: [results[v]["metrics"][overall][results[v]["seeds"].index(s)] for s in seeds]
    diff, _, p = paired_test(pick("mma"), pick(other))
    if not np.isfinite(p):
      lines.append(f"- MMA − {VARIANTS[other].label}: {diff:+.3f} overall accuracy; with "
                   f"{len(seeds)} seed(s) there is no significance test, so no claim either way.")
    elif diff > 0 and p < 0.05:
      lines.append(f"- MMA beats {VARIANTS[other].label}: {diff:+.3f} overall accuracy, paired "
                   f"p = {p:.3g} over {len(seeds)} seeds.")
    else:
      how = "is ahead by" if diff > 0 else "is behind by" if diff < 0 else "ties at"
      lines.append(f"- MMA does **not** significantly beat {VARIANTS[other].label}: it {how} "
                   f"{abs(diff):.3f} overall accuracy, paired p = {p:.3g} over {len(seeds)} "
                   "seeds.")
  wins = sum("MMA beats" in l for l in lines)
  head = (f"MMA beats all {len(lines)} baselines at this scale." if wins == len(lines) else
          f"At this scale MMA significantly beats {wins} of {len(lines)} baselines "
          f"({n} seed(s)); the claim is not reproduced where it does not.")
  return [head, ""] + lines


def write_report(workdir: str, runs: Sequence[Run], results: Mapping[str, dict],
                 mechanism_result: Mapping | None = None) -> dict[str, str]:
  """report.md, results.csv and study.png under workdir; returns their paths."""
  rows = summarize(results)
  paths = {"markdown": os.path.join(workdir, "report.md"),
           "csv": os.path.join(workdir, "results.csv"),
           "plot": os.path.join(workdir, "study.png")}
  fields = ["variant", "label", "steps", "metric", "n", "mean", "std", "values",
            "delta_vs_causal", "p_vs_causal"]
  with open(paths["csv"], "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow(dict(r, values=";".join(repr(x) for x in r["values"])))
  metrics = metric_names(results[BASELINE]["metrics"])
  by = {(r["variant"], r["metric"]): r for r in rows}
  pt = runs[0].config
  sft = next(r for r in runs if r.variant == BASELINE).config
  m = sft.model.llm
  md = ["# The MMA ablation at small scale", "",
        f"PT {pt.train.steps} steps, then SFT {sft.train.steps} steps per order from that "
        f"checkpoint (DOT and causal 2x: {2 * sft.train.steps}); "
        f"{len(results[BASELINE]['seeds'])} seed(s) per variant (seed = config.seed and the data "
        f"shuffling); batch {sft.train.batch_size} x {sft.data.pack_length} tokens; LLM "
        f"{m.layers} layers x {m.hidden}; train/test {sft.data.train_size}/{sft.data.test_size} "
        "records of the built-in shapes benchmark.", "",
        "## Test accuracy (mean ± std over seeds)", "",
        "| variant | steps | " + " | ".join(_short(x) for x in metrics) + " | step time ÷ causal |",
        "|" + " --- |" * (len(metrics) + 3)]
  for v in results:
    cells = [f"{by[v, x]['mean']:.3f} ± {by[v, x]['std']:.3f}" for x in metrics]
    t = by[v, "step_time_rel"]
    md.append(f"| {VARIANTS[v].label} | {results[v]['steps']} | " + " | ".join(cells)
              + f" | {_fmt(t['mean'], 2)} ± {_fmt(t['std'], 2)} |")
  chance = results[BASELINE]["chance"]
  md.append("| chance (majority answer) | | "
            + " | ".join(_fmt(chance.get(x, float("nan"))) for x in metrics) + " | |")
  md += ["", "## Difference to causal I&T (paired over seeds; p of a paired t-test)", "",
         "| variant | " + " | ".join(_short(x) for x in metrics) + " |",
         "|" + " --- |" * (len(metrics) + 1)]
  for v in [v for v in results if v != BASELINE]:
    md.append(f"| {VARIANTS[v].label} | " + " | ".join(
        f"{by[v, x]['delta_vs_causal']:+.3f} (p {_fmt(by[v, x]['p_vs_causal'])})"
        for x in metrics) + " |")
  md += ["", "## Verdict", ""] + _verdict(results)
  md += ["", "Step time is the median seconds per train step from each run's train_log.jsonl "
         "(first logging interval left out) divided by the causal run's of the same seed; "
         "DOT and causal 2x also take twice the steps.", "", "![results](study.png)"]
  if mechanism_result:
    md += ["", "## Mechanism (seed 0)", "",
           "Cosine distance between the image tokens' hidden states when the same image is asked "
           "two different questions, mean over pairs, per layer (0 = input embeddings):", "",
           "| run | " + " | ".join(str(i) for i in range(len(
               next(iter(mechanism_result["drift"].values()))))) + " |",
           "|" + " --- |" * (1 + len(next(iter(mechanism_result["drift"].values()))))]
    for label, d in mechanism_result["drift"].items():
      md.append(f"| {label} | " + " | ".join(f"{np.mean(x):.2e}" for x in d) + " |")
    md += ["", "Under causal the image tokens come before the question, so their states are "
           "identical whatever is asked (distance exactly 0); under MMA they read the question.",
           ""] + [f"![{os.path.basename(p)}](mechanism/{os.path.basename(p)})"
                  for p in mechanism_result["files"]]
  with open(paths["markdown"], "w") as f:
    f.write("\n".join(md) + "\n")
  plot(results, rows, metrics, paths["plot"])
  return paths


def plot(results, rows, metrics, path: str) -> None:
  """Bars: mean ± std per metric and variant; and the step-time ratios."""
  from mma_jax import mechanism
  by = {(r["variant"], r["metric"]): r for r in rows}
  variants = list(results)
  fig = mechanism.figure(figsize=(12, 4))
  ax, ax_t = fig.subplots(1, 2, width_ratios=[4, 1])
  width = 0.8 / len(variants)
  x = np.arange(len(metrics))
  for n, v in enumerate(variants):
    ax.bar(x + n * width, [by[v, m]["mean"] for m in metrics], width,
           yerr=[by[v, m]["std"] for m in metrics], label=VARIANTS[v].label, capsize=2)
    t = by[v, "step_time_rel"]
    ax_t.bar(n, t["mean"], yerr=t["std"], color=f"C{n}", capsize=2)
  chance = results[BASELINE]["chance"]
  ax.scatter(x + 0.4 - width / 2, [chance.get(m, np.nan) for m in metrics], marker="_", s=400,
             color="k", label="chance", zorder=3)
  ax.set_xticks(x + 0.4 - width / 2, [_short(m) for m in metrics])
  ax.set_ylabel("test score (mean ± std over seeds)")
  ax.set_ylim(0, 1.05)
  ax.legend(fontsize=7, ncol=2)
  ax_t.axhline(1.0, color="k", lw=0.8)
  ax_t.set_xticks(range(len(variants)), variants, rotation=45, fontsize=7)
  ax_t.set_ylabel("train-step time ÷ causal")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


# --- the study --------------------------------------------------------------------------------

def run_study(workdir: str, seeds: int = 3, variants: Sequence[str] = tuple(VARIANTS),
              steps: int | None = None, pt_steps: int | None = None,
              overrides: Mapping[str, Any] | None = None, configs_dir: str = CONFIGS_DIR,
              mechanism_examples: int = 3, jobs: int = 1) -> dict | None:
  """Run (or reuse) every run of the plan, then write the report.

  jobs > 1 trains that many runs at once in subprocesses (PT first, alone).

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
    # PT alone first: every SFT run starts from its checkpoint.
    trained = _train_in_processes([r for r in todo if r is runs[0]], 1, command)
    if trained is not None:
      more = _train_in_processes([r for r in todo if r is not runs[0]], jobs, command)
      trained = None if more is None else trained + more
  else:
    trained = _train_here(todo, len(runs))
  if trained is None:
    logging.warning("Study stopped; rerun the same command to continue.")
    return None
  results = collect(runs)
  mech = None
  if mechanism_examples and {"mma", BASELINE} <= set(variants) and \
      runs[1].config.data.source == "shapes":
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
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per variant.")
_STEPS = flags.DEFINE_integer("steps", None, "SFT steps per order (default: the SFT configs').")
_PT_STEPS = flags.DEFINE_integer("pt_steps", None, "PT steps (default: configs/pt.py's).")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Any of {list(VARIANTS)}.")
_CONFIGS_DIR = flags.DEFINE_string("configs_dir", CONFIGS_DIR, "Where pt.py and sft_*.py are.")
_MECHANISM = flags.DEFINE_integer("mechanism_examples", 3, "Images for the mechanism pictures "
                                  "(0 = none).")
_JOBS = flags.DEFINE_integer("jobs", 1, "Runs trained at once, each in its own process.")
_RUN = flags.DEFINE_string("run", None, "Train only this run of the plan (used by --jobs).")
# --config.KEY=VALUE: typed against the base config; applied to every run (PT and SFT).
_CONFIG = config_flags.DEFINE_config_dict(
    "config", config_lib.base_config(), "Overrides for every run, e.g. --config.optim.lr=1e-3.",
    lock_config=True)


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
  out = run_study(_WORKDIR.value, _SEEDS.value, _VARIANTS.value, _STEPS.value, _PT_STEPS.value,
                  _overrides(), _CONFIGS_DIR.value, _MECHANISM.value, _JOBS.value)
  if out is None:
    sys.exit(1)
  with open(out["paths"]["markdown"]) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)
