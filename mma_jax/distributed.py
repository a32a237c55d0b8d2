"""Multi-controller start-up: one Python process per host, all running the same program.

`initialize` calls jax.distributed.initialize before anything touches the devices:
  explicit  --coordinator_address / --num_processes / --process_id flags, or the environment
            variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (launch/local.py
            sets these);
  slurm     a multi-task `srun` step (JAX reads SLURM_* itself; a task alone on its node gets
            all the node's GPUs, see slurm_local_device_ids);
  tpu       a Cloud TPU VM (JAX asks the TPU metadata server for the slice's workers);
  single    anything else: one process, nothing to initialize.
Afterwards jax.devices() lists the devices of every process and jax.process_index() says which
process this is.
"""
from __future__ import annotations

import glob
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def _on_tpu_vm() -> bool:
  # TPU chips show up as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5e and later) on a TPU VM.
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
              or os.environ.get("TPU_WORKER_HOSTNAMES"))


def detect(coordinator_address=None, num_processes=None, process_id=None) -> str:
  """Which start-up applies: 'explicit', 'slurm', 'tpu' or 'single' (see the module doc)."""
  if any(v not in (None, "") for v in (coordinator_address, num_processes, process_id)) or any(
      os.environ.get(v) for v in ENV.values()):
    return "explicit"
  if os.environ.get("SLURM_STEP_NODELIST") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if _on_tpu_vm():
    return "tpu"
  return "single"


def slurm_local_device_ids() -> list[int] | None:
  """The GPUs a process of a SLURM step owns, for jax.distributed.initialize.

  Left alone, JAX gives each SLURM task the one GPU at index SLURM_LOCALID: right for one task
  per GPU (--ntasks-per-node=8), but one task per node would then use 1 of its 8 GPUs. With a
  single task per node it gets all the node's GPUs (SLURM_GPUS_ON_NODE, else the count in
  CUDA_VISIBLE_DEVICES); None = JAX's default (outside SLURM, several tasks per node, or GPUs
  not known).
  """
  env = os.environ
  if not env.get("SLURM_STEP_NODELIST") and not env.get("SLURM_JOB_NODELIST"):
    return None
  tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
  nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")))
  if tasks != nodes:
    return None
  gpus = env.get("SLURM_GPUS_ON_NODE", "")
  if not gpus.isdigit():
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    gpus = str(len(visible.split(","))) if visible else ""
  return list(range(int(gpus))) if gpus.isdigit() and int(gpus) > 0 else None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Join the run's processes (flags win over the environment). Returns the detect() result."""
  how = detect(coordinator_address, num_processes, process_id)
  if how == "single":
    return how
  if how == "explicit":
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    args = {}
    for key, value in given.items():
      value = value if value not in (None, "") else os.environ.get(ENV[key])
      if value in (None, ""):
        raise ValueError(f"Multi-process start-up needs --{key} (or ${ENV[key]}) as well: "
                         f"give all of --coordinator_address, --num_processes, --process_id.")
      args[key] = value if key == "coordinator_address" else int(value)
    jax.distributed.initialize(**args, local_device_ids=slurm_local_device_ids())
  elif how == "slurm":
    jax.distributed.initialize(local_device_ids=slurm_local_device_ids())
  else:  # a TPU VM: a slice's workers are found through the metadata server
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # e.g. a single-host TPU VM without the metadata
      logging.warning("TPU VM without a multi-host slice (%s): running as one process.", e)
      return "single"
  logging.info("Process %d of %d (%s start-up); %d local of %d devices.", jax.process_index(),
               jax.process_count(), how, jax.local_device_count(), jax.device_count())
  return how


@jax.jit
def _any(votes):
  return votes.any()


def any_process(flag: bool, mesh) -> jax.Array:
  """True where any process passed True: a replicated bool, computed without blocking.

  Processes must agree on when to stop (a SIGTERM may reach one host first); reading the result
  one step later costs no pipeline stall.
  """
  sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
  local = np.full((len(mesh.local_devices),), bool(flag))
  return _any(jax.make_array_from_process_local_data(sharding, local))


def process_zero_first(fn):
  """fn() on process 0, then on the others: files on a shared disk are prepared once, and
  processes with their own disks each prepare a copy."""
  if jax.process_count() == 1:
    return fn()
  barrier = "mma_jax: process 0 prepared its files"
  if jax.process_index() > 0:
    multihost_utils.sync_global_devices(barrier)
  out = fn()
  if jax.process_index() == 0:
    multihost_utils.sync_global_devices(barrier)
  return out


def to_numpy(tree):
  """Arrays -> numpy on every process, gathering the shards that other processes hold."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x) if getattr(x, "is_fully_addressable", True)
      else multihost_utils.process_allgather(x, tiled=True), tree)
