"""The study's training speed on this machine, before and after each change, from one run.

  python benchmarks/study_step.py [--jobs 2] [--steps 30]

Trains --jobs copies of the study's SFT run at once, as `python -m mma_jax.study --jobs=N`
does (each in its own process): the hard shapes benchmark, the tiny model at 64 px (the
committed study's command), MMA. Each job times --steps training steps as the loop runs them
(next batch, host -> device, train step) after compiling and after one epoch of warm-up, so the
example cache is full, as it is for all but the first epoch of a run (the training set is
made small for that: 640 records, 10 batches an epoch). Printed per setting: one job's ms per
step, the machine's (ms per step of all jobs together: job / jobs) and its speed-up over
`before`. The settings add one change at a time:

  before      as the committed study trained: a scan over the layers, Grain's default
              read-ahead (16 threads, 500 examples), examples decoded every epoch, jobs free
              to run on any core
  +unroll     model.{llm,vision}.unroll=0: no layer loop
  +read-ahead data.read_threads=4, data.read_ahead=64
  +cache      data.cache_shapes=True: examples encoded once
  +pin        each job on its own cores (--pin_jobs): the defaults plus pinning

The speed-up of the last row over `before` is what a study gains here. Nothing is asserted.

  python benchmarks/study_step.py --breakdown [--jobs 2]

splits the last setting's step instead (every job pinned, as a study trains): per job, the
ms of the input (next batch and host -> device), of the loss alone (forward), of the loss and
its gradient (forward + backward), and of the whole train step on one batch (with the
optimizer), each the best of three passes; what the step adds to the gradient is the
optimizer's update, and backward / forward is the gradient's cost over the loss's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SETTINGS = {  # name: (config overrides, pinned)
    "before": ({"model.llm.unroll": 1, "model.vision.unroll": 1, "data.read_threads": 16,
                "data.read_ahead": 500, "data.cache_shapes": False}, False),
    "+unroll": ({"data.read_threads": 16, "data.read_ahead": 500, "data.cache_shapes": False},
                False),
    "+read-ahead": ({"data.cache_shapes": False}, False),
    "+cache": ({}, False),
    "+pin": ({}, True),
}
STUDY = {"stage": "sft", "data.difficulty": "hard", "model.vision.image_size": 64,
         "model.vision.patch_size": 16, "data.train_size": 640, "data.validation_size": 16,
         "data.test_size": 16}


def worker(overrides: dict, steps: int, data_dir: str, breakdown: bool = False) -> dict:
  """Trains on the overrides' config and returns {"ms_per_step": ..., "loss": ...}, and with
  `breakdown` the ms of each part of a step (see the module docstring)."""
  # pylint: disable=g-import-not-at-top (the parent process imports no JAX)
  import jax
  from absl import logging
  from mma_jax import logs, sharding
  from mma_jax.study import planning
  from mma_jax.train import loop
  logs.quiet_libraries()
  logging.set_verbosity(logging.WARNING)
  c = planning.load_config(os.path.join(planning.CONFIGS_DIR, "sft_mma.py"))
  for key, value in {**STUDY, **overrides}.items():
    planning._set(c, key, value)  # pylint: disable=protected-access
  c.data.dir, c.train.steps = data_dir, 10 ** 6
  with tempfile.TemporaryDirectory() as workdir:
    trainer = loop.Trainer(c, workdir)
    with sharding.use(trainer.mesh, trainer.rules):
      step, _ = trainer._setup()  # pylint: disable=protected-access
      state, it = trainer.state, trainer.iterator
      epoch = -(-c.data.train_size // 64)  # batches of about 64 examples: the cache filled
      for _ in range(epoch + 2):
        state, metrics = step(state, sharding.put_batch(next(it), trainer.mesh))
      jax.block_until_ready(metrics)
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = step(state, sharding.put_batch(next(it), trainer.mesh))
      jax.block_until_ready(metrics)
      seconds = time.perf_counter() - start
      out = {"ms_per_step": 1e3 * seconds / steps, "loss": float(metrics["loss"])}
      if breakdown:
        out.update(_parts(trainer, step, state, it, steps))
      trainer._close_data()  # pylint: disable=protected-access
  return out


def _best_ms(fn, steps: int) -> float:
  """fn() `steps` times, thrice; the best pass's ms per call (fn returns what to wait for)."""
  # pylint: disable-next=g-import-not-at-top
  import jax
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(steps):
      out = fn()
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - start)
  return 1e3 * best / steps


def _parts(trainer, step, state, it, steps: int) -> dict:
  """The ms of each part of the study's step, on one batch (module docstring)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from mma_jax import sharding
  from mma_jax.train import optimizer
  from mma_jax.train import step as step_lib
  c = trainer.config
  batch = sharding.put_batch(next(it), trainer.mesh)
  loss_sum = step_lib.trainable_loss(trainer.model, c.mask,
                                     optimizer.trainable_mask(state.params, c.optim.freeze))

  def loss(params):  # the train step's loss, per response token
    total, count = loss_sum(params, batch)
    return total / count

  forward, grad = jax.jit(loss), jax.jit(jax.grad(loss))
  params = state.params
  out = {"input_ms": _best_ms(lambda: sharding.put_batch(next(it), trainer.mesh), steps),
         "forward_ms": _best_ms(lambda: forward(params), steps),
         "grad_ms": _best_ms(lambda: grad(params), steps)}
  holder = [state]

  def one_step():
    holder[0], metrics = step(holder[0], batch)
    return metrics
  out["step_ms"] = _best_ms(one_step, steps)
  return out


def measure(name: str, jobs: int, steps: int, data_dir: str,
            breakdown: bool = False) -> list[dict]:
  """Runs `jobs` workers of setting `name` at once; their results."""
  # pylint: disable-next=g-import-not-at-top
  from mma_jax.study.run import job_cores
  overrides, pinned = SETTINGS[name]
  cores = job_cores(jobs) if pinned else [None] * jobs
  procs = []
  for slot in range(jobs):
    pin = (lambda cpus=cores[slot]: os.sched_setaffinity(0, cpus)) if cores[slot] else None
    procs.append(subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(overrides), "--steps", str(steps),
         "--data_dir", data_dir] + ["--breakdown"] * breakdown, stdout=subprocess.PIPE,
        preexec_fn=pin, text=True))
  out = []
  for p in procs:
    stdout, _ = p.communicate()
    if p.returncode:
      raise RuntimeError(f"{name}: a worker failed (exit {p.returncode}); run it alone to see")
    out.append(json.loads(stdout.strip().splitlines()[-1]))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--jobs", type=int, default=2)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--breakdown", action="store_true",
                      help="split the last setting's step into its parts instead")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--data_dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker is not None:
    print(json.dumps(worker(json.loads(args.worker), args.steps, args.data_dir,
                            args.breakdown)))
    return
  with tempfile.TemporaryDirectory() as data_dir:
    measure("+cache", 1, 1, data_dir)  # writes the benchmark files once, before any timing
    print(f"{args.jobs} jobs at once, {args.steps} timed steps each, on {os.cpu_count()} CPUs "
          "(16 rows x 160 tokens, hard shapes at 64 px, tiny model, MMA)")
    if args.breakdown:
      _print_breakdown(measure(list(SETTINGS)[-1], args.jobs, args.steps, data_dir, True))
      return
    print(f"{'setting':<12} {'job ms/step':>12} {'machine ms/step':>16} {'speed-up':>9}  losses")
    base = None
    for name in SETTINGS:
      results = measure(name, args.jobs, args.steps, data_dir)
      job = sum(r["ms_per_step"] for r in results) / len(results)
      machine = job / args.jobs
      base = base or machine
      losses = " ".join(f"{r['loss']:.6f}" for r in results)
      print(f"{name:<12} {job:12.1f} {machine:16.1f} {base / machine:8.2f}x  {losses}",
            flush=True)


def _print_breakdown(results: list[dict]) -> None:
  """One line per job: the ms of each part of its step, and backward over forward."""
  print(f"{'job':<4} {'trained':>8} {'input':>7} {'forward':>8} {'fwd+bwd':>8} {'step':>7} "
        f"{'optimizer':>10} {'bwd / fwd':>10}   (ms per step)")
  for i, r in enumerate(results):
    print(f"{i:<4} {r['ms_per_step']:8.1f} {r['input_ms']:7.1f} {r['forward_ms']:8.1f} "
          f"{r['grad_ms']:8.1f} {r['step_ms']:7.1f} {r['step_ms'] - r['grad_ms']:10.1f} "
          f"{(r['grad_ms'] - r['forward_ms']) / r['forward_ms']:10.2f}", flush=True)


if __name__ == "__main__":
  main()
