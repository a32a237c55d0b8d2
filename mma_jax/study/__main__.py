"""The paper's ablation at small scale: PT, then SFT per variant x seed, and a report.

  python -m mma_jax.study --workdir=runs/study [--seeds=5] [--steps=N] [--pt_steps=N] \
      [--variants=causal,reversed,dot,causal_2x,mma,prefix] [--jobs=N] [--timing_seconds=2] \
      [--config.KEY=VALUE ...]

Every SFT run starts from the same PT checkpoint, on the same data and model, for the same
number of steps; DOT trains `steps` in T&I and then `steps` in I&T, so `causal_2x` (causal I&T
for 2 x steps) is its fair control. The exception is `mma_pt_prompt` (the paper's open question,
MMA in PT): `mma`'s SFT from a second PT run, `pt_prompt`, trained like the first but under mask
mma with an instruction after the images (PT_RUNS), so it differs from `mma` by the PT alone.
`mma_2turn` and `mma_conversation_2turn` (the open question on multi-turn grouping) train on
two-turn records (data.turns=2, a question about one cell before the scored one) from the same
PT run; the verdict tests the second against the first, apart from MMA's family.
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
cores; on one accelerator, 1. --pin_jobs keeps each job to its own cores (N <= cores): XLA then
sizes its thread pool to them, and on the 2-core VM two pinned jobs trained 1.26x more steps
per second than two unpinned ones (benchmarks/study_step.py). XLA's thread count changes the last
bits of the results: a study's seeds are reproduced with the same --jobs and --pin_jobs.

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

import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from mma_jax import config as config_lib
from mma_jax import cli, logs
from mma_jax.study import CONFIGS_DIR, VARIANTS, finished, plan, run_study


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
_PIN = flags.DEFINE_bool("pin_jobs", False, "With --jobs > 1: each job on its own CPU cores.")
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
                  _TIMING.value, _PIN.value)
  if out is None:
    sys.exit(1)
  with open(out["paths"]["markdown"]) as f:
    print(f.read())


if __name__ == "__main__":
  cli.run_absl(main, _define_config_flag)
