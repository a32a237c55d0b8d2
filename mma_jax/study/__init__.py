"""The paper's ablation at small scale: PT, then SFT per variant x seed, and a report. The
command, the layout of its --workdir, the statistics and the step time: __main__.py (--help).

  variants    what is compared: VARIANTS, the PT runs they start from, the keys the study sets
  planning    the plan: a Run per PT run and per variant x seed, its config and workdir
  run         training the runs, one after another or --jobs at once in subprocesses
  timing      each variant's train step timed alone, after training
  results     the finished runs' metrics and logged step times, per variant
  statistics  mean and 95% interval, paired t-tests against causal I&T, Holm-Bonferroni
  report      report.md, results.csv and study.png
  __main__    the command line (python -m mma_jax.study)

run_study (here) ties them together; the names above are importable from mma_jax.study.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import logging

# pylint: disable=unused-import (re-exported: mma_jax.study.NAME, as before the package)
from mma_jax.study.planning import (CONFIGS_DIR, REPO, Run, apply_overrides, finished,
                                    load_config, plan)
from mma_jax.study.report import plot, write_report
from mma_jax.study.results import collect, metric_names, step_time
from mma_jax.study.run import _command, _prepare_data, _train_here, _train_in_processes
from mma_jax.study.statistics import (ALPHA, CONFIDENCE, LOGGED, STEP_METRICS, TIMED, holm,
                                      mean_ci, paired_test, summarize)
from mma_jax.study.timing import time_train_step, time_variants
from mma_jax.study.variants import (BASELINE, FIXED_KEYS, PT_PROMPT, PT_RUNS, VARIANTS,
                                    Variant)
# pylint: enable=unused-import


# run_study is here, not in run.py: it calls the training helpers by their names in this
# package, so that a test's monkeypatch of study._prepare_data or study._train_in_processes
# reaches it.
def run_study(workdir: str, seeds: int = 5, variants: Sequence[str] = tuple(VARIANTS),
              steps: int | None = None, pt_steps: int | None = None,
              overrides: Mapping[str, Any] | None = None, configs_dir: str = CONFIGS_DIR,
              mechanism_examples: int = 3, jobs: int = 1,
              timing_seconds: float = 2.0, pin_jobs: bool = False) -> dict | None:
  """Run (or reuse) every run of the plan, time each variant's step alone, write the report.

  jobs > 1 trains that many runs at once in subprocesses (the PT runs first, only with each
  other); pin_jobs keeps each to its own CPU cores (run.job_cores). timing_seconds: per
  variant, for time_variants once all training has ended; 0 = step times from the training
  logs instead.

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
    trained = _train_in_processes(pts, jobs, command, pin_jobs)
    if trained is not None:
      sfts = [r for r in todo if r.variant]
      # Each data setting's files (a variant's overrides may give it its own) are written
      # here first, as its seeds starting at once would collide writing them.
      firsts = {}
      for r in sfts:
        firsts.setdefault(r.config.data.to_json(), r)
      for first in firsts.values():
        _prepare_data(first)
      more = _train_in_processes(sfts, jobs, command, pin_jobs)
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

