"""What the finished runs left: their test metrics and logged step times, gathered per variant
from each run's results.json and train_log.jsonl."""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from mma_jax.study.planning import Run


def metric_names(metrics: Mapping[str, float]) -> list[str]:
  """accuracy/all, accuracy per question type (benchmark order), f1/exist, then train/accuracy
  likewise: those present."""
  from mma_jax.data.shapes import generate  # pylint: disable=g-import-not-at-top
  types = [t for t in generate.QUESTION_TYPES if f"accuracy/{t}" in metrics]
  types += sorted(k.split("/", 1)[1] for k in metrics
                  if k.startswith("accuracy/") and k.split("/", 1)[1] not in types + ["all"])
  names = ["accuracy/all"] + [f"accuracy/{t}" for t in types] + ["f1/exist"]
  # config.eval.train_examples: the same on training records, how well SFT fits them
  names += [f"train/{n}" for n in names if n.startswith("accuracy/")]
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

