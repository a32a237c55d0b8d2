"""Soak: a few thousand steps of the default job, watching host memory and step time.

  python benchmarks/soak.py                        # 3000 steps of configs/sft_mma.py
  python benchmarks/soak.py --steps 1000 --max_seconds 300

Runs the default job as a user does, `python -m mma_jax.main --config=configs/sft_mma.py`
(tiny model, batch 16 x 160 tokens, Grain pipeline with its prefetch thread, TensorBoard +
log-line metric writer every --log_every steps, async Orbax checkpoints every 500 steps, the
test evaluation at the end), with --config.train.steps=--steps. Every --every seconds it reads
the child's resident memory (VmRSS in /proc/PID/status, so Linux only) next to the last step
the run logged (train_log.jsonl), and prints

  - a table of the median RSS and step time per window of --window steps after --warmup steps
    (compilation, the pipeline's read-ahead buffers filling, the first checkpoint);
  - RSS growth per 1000 steps: the least-squares slope over the window medians (RSS swings by
    ~100 MiB within a window: buffers, checkpoints), and over all samples;
  - step time growth per 1000 steps: the same for the logged step_time.

An input pipeline, a metric writer or a checkpointer that leaks shows as an RSS slope that
stays positive however long the run; a flat one is noise of a few MiB. Step times are wall
time of a shared machine: other processes add noise, never a trend of their own.
--max_seconds stops the run with SIGTERM (it saves a checkpoint and exits) and reports the
steps it reached. The figures go to docs/performance.md, section Soak.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid: int) -> float | None:
  """Resident memory of a process in MiB (None once it is gone)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    return None
  return None


class LogTail:
  """New rows of a growing train_log.jsonl (step, step_time, ...)."""

  def __init__(self, path: str):
    self.path, self.offset, self.rows = path, 0, []

  def read(self) -> list[dict]:
    if os.path.exists(self.path):
      with open(self.path) as f:
        f.seek(self.offset)
        for line in f:
          if not line.endswith("\n"):
            break  # a line still being written: read it next time
          self.offset += len(line)
          self.rows.append(json.loads(line))
    return self.rows

  @property
  def step(self) -> int:
    return self.rows[-1]["step"] if self.rows else 0


def per_1000(steps, values) -> float:
  """Least-squares slope of values over steps, per 1000 steps."""
  if len(steps) < 2 or max(steps) == min(steps):
    return float("nan")
  return float(np.polyfit(np.asarray(steps, float), np.asarray(values, float), 1)[0] * 1000)


def run(args) -> dict:
  workdir = args.workdir or tempfile.mkdtemp(prefix="mma_jax_soak_")
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable, "-m", "mma_jax.main", f"--config={args.config}",
         f"--workdir={workdir}", f"--config.train.steps={args.steps}",
         f"--config.train.log_every={args.log_every}", *args.override]
  if args.data_dir:
    cmd.append(f"--config.data.dir={args.data_dir}")
  log = open(os.path.join(workdir, "soak_stderr.log"), "w")
  print("soak:", " ".join(cmd[1:]), flush=True)
  start = time.time()
  child = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  tail = LogTail(os.path.join(workdir, "train_log.jsonl"))
  samples, stopped = [], False  # (seconds, step, RSS MiB)
  while child.poll() is None:
    time.sleep(args.every)
    tail.read()
    rss = rss_mib(child.pid)
    if rss is not None and tail.step < args.steps:  # training, not the final evaluation
      samples.append((time.time() - start, tail.step, rss))
    if args.max_seconds and time.time() - start > args.max_seconds and not stopped:
      child.send_signal(signal.SIGTERM)  # the run saves a checkpoint and exits
      stopped = True
    if samples and len(samples) % max(1, int(60 / args.every)) == 0:
      print(f"  {samples[-1][0]:6.0f} s  step {tail.step:5d}  RSS {samples[-1][2]:7.1f} MiB",
            flush=True)
  log.close()
  if child.returncode not in (0, None) and not stopped:
    raise SystemExit(f"The run failed (exit {child.returncode}); see "
                     f"{os.path.join(workdir, 'soak_stderr.log')}.")
  rows = tail.read()
  return {"workdir": workdir, "samples": samples, "rows": rows, "seconds": time.time() - start,
          "stopped": stopped}


def windows(points, start: int, width: int) -> list[tuple[int, float]]:
  """(window start step, median value) of (step, value) points in windows of `width` steps."""
  out = []
  for lo in range(start, max(p[0] for p in points) + 1, width):
    inside = [v for step, v in points if lo <= step < lo + width]
    if inside:
      out.append((lo, float(np.median(inside))))
  return out


def report(args, out: dict) -> None:
  with open(os.path.join(out["workdir"], "soak.json"), "w") as f:
    json.dump({k: out[k] for k in ("samples", "rows", "seconds", "stopped")}, f)
  reached = out["rows"][-1]["step"] if out["rows"] else 0
  print(f"\nsoak: {reached} of {args.steps} steps of {args.config} in {out['seconds']:.0f} s"
        f"{' (stopped by --max_seconds)' if out['stopped'] else ''}; {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; samples in {out['workdir']}/soak.json")
  rss = [(step, mib) for _, step, mib in out["samples"] if step >= args.warmup]
  times = [(r["step"], 1000 * r["step_time"]) for r in out["rows"] if r["step"] > args.warmup]
  if len(rss) < 2 or len(times) < 2:
    print(f"Too few samples after the {args.warmup}-step warm-up to fit a trend.")
    return
  print(f"RSS after warm-up: min {min(v for _, v in rss):.1f} MiB, max "
        f"{max(v for _, v in rss):.1f} MiB over {len(rss)} samples (steps {rss[0][0]}-"
        f"{rss[-1][0]})")
  rss_w, time_w = windows(rss, args.warmup, args.window), windows(times, args.warmup,
                                                                  args.window)
  print(f"{'steps':>11}  {'RSS MiB (median)':>16}  {'step ms (median)':>16}")
  for (lo, mib), (_, ms) in zip(rss_w, time_w):
    print(f"{lo:5d}-{lo + args.window - 1:<5d}  {mib:16.1f}  {ms:16.1f}")
  print(f"RSS growth per 1000 steps: {per_1000(*zip(*rss_w)):+.2f} MiB over the window "
        f"medians ({per_1000(*zip(*rss)):+.2f} MiB over all samples)")
  print(f"step time growth per 1000 steps: {per_1000(*zip(*time_w)):+.2f} ms over the window "
        f"medians ({per_1000(*zip(*times)):+.2f} ms over all {len(times)} logged intervals)")


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/sft_mma.py")
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--warmup", type=int, default=200, help="steps left out of the fits")
  p.add_argument("--log_every", type=int, default=25, help="config.train.log_every")
  p.add_argument("--every", type=float, default=2.0, help="seconds between RSS samples")
  p.add_argument("--window", type=int, default=300, help="steps per window of medians")
  p.add_argument("--max_seconds", type=float, default=0, help="SIGTERM the run after this")
  p.add_argument("--workdir", default="", help="default: a fresh temporary folder")
  p.add_argument("--data_dir", default="", help="config.data.dir (default: next to workdir)")
  p.add_argument("override", nargs="*", help="more flags for mma_jax.main, e.g. "
                 "--config.train.batch_size=8 (after --)")
  args = p.parse_args()
  report(args, run(args))


if __name__ == "__main__":
  main()
