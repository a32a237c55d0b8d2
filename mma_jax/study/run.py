"""Training the study's runs: one after another in this process, or up to --jobs at once, each
in a `--run=NAME` subprocess of the same command (SIGTERM passed on, failures named)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from absl import logging

from mma_jax.study.planning import Run, finished


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


def job_cores(jobs: int, cores: Sequence[int] | None = None) -> list[set[int]]:
  """The CPU cores of each of `jobs` pinned jobs: this process's cores dealt out in turn.

  Raises: ValueError when there are fewer cores than jobs.
  """
  cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
  if jobs > len(cores):
    raise ValueError(f"--pin_jobs: {jobs} jobs need as many CPU cores; this process may use "
                     f"{len(cores)}. Lower --jobs or leave --pin_jobs out.")
  return [set(cores[slot::jobs]) for slot in range(jobs)]


def _train_in_processes(todo: Sequence[Run], jobs: int, command: list[str],
                        pin: bool = False) -> list[str] | None:
  """Trains the runs, up to `jobs` at once, each in a subprocess; None when stopped by SIGTERM.

  pin: each job keeps to its own cores (job_cores), so XLA sizes its thread pool to them
  instead of every job's threads contending for every core.
  A SIGTERM is passed on to the running runs (they save a checkpoint) and starts no new one.
  A run that fails stops the study once the others ended, naming its log.
  """
  slots = job_cores(jobs) if pin else [None] * jobs
  free = list(range(jobs))
  pending, active, trained, failed = list(todo), {}, [], []
  stop = []
  def forward(signum, frame):  # pylint: disable=unused-argument
    stop.append(signum)
    for proc, *_ in active.values():
      proc.send_signal(signal.SIGTERM)
  previous = signal.signal(signal.SIGTERM, forward)
  try:
    while active or (pending and not stop and not failed):
      while pending and len(active) < jobs and not stop and not failed:
        run, slot = pending.pop(0), free.pop(0)
        os.makedirs(run.workdir, exist_ok=True)
        log = open(os.path.join(run.workdir, "study_run.log"), "a")
        cores = slots[slot]
        logging.info("Study: %s started (%d waiting)%s; log %s.", run.name, len(pending),
                     f" on cores {sorted(cores)}" if cores else "", log.name)
        pin_to = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        active[run.name] = (subprocess.Popen(command + [f"--run={run.name}"], stdout=log,
                                             stderr=subprocess.STDOUT, preexec_fn=pin_to),
                            log, run, slot)
      time.sleep(1.0)
      for name, (proc, log, run, slot) in list(active.items()):
        if proc.poll() is None:
          continue
        log.close()
        del active[name]
        free.append(slot)
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

