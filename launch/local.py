"""Start N processes of one command on this machine's CPU, joined as one multi-process JAX run.

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      python -m mma_jax.main --config=configs/sft_mma.py --workdir=/tmp/mma_local

Each process gets JAX_PLATFORMS=cpu, its own simulated CPU devices, and JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID (read by mma_jax.distributed.initialize), so the processes
behave like the hosts of a pod: one global mesh, collectives across processes. SIGTERM and
SIGINT are forwarded to every process (each saves a checkpoint and exits); when one process
fails the others are stopped. Exit status: the first failure's, else 0.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def child_env(process_id: int, num_processes: int, devices: int, port: int) -> dict[str, str]:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
             JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(process_id),
             XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))
  return env


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="simulated CPU devices in each process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port; 0 = a free one")
  parser.add_argument("--log_dir", default="",
                      help="write process_<i>.log files here; default: this terminal")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- then the command every process runs")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --, e.g. -- python -m mma_jax.main ...")
  port = args.port or free_port()

  procs, logs = [], []
  for i in range(args.num_processes):
    out = None
    if args.log_dir:
      os.makedirs(args.log_dir, exist_ok=True)
      out = open(os.path.join(args.log_dir, f"process_{i}.log"), "w")
      logs.append(out)
    procs.append(subprocess.Popen(
        command, env=child_env(i, args.num_processes, args.devices_per_process, port),
        stdout=out, stderr=subprocess.STDOUT if out else None))

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)

  status = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and not status:
      status = failed[0]
      print(f"launch/local.py: a process exited with {status}; stopping the others.",
            file=sys.stderr)
      forward(signal.SIGTERM, None)
      deadline = time.time() + 30
      while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.1)
  for f in logs:
    f.close()
  status = status or next((p.returncode for p in procs if p.returncode), 0)
  return 128 - status if status < 0 else status  # killed by signal N: 128 + N, as shells do


if __name__ == "__main__":
  sys.exit(main())
