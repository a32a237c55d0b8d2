"""python -m mma_jax.main --config=configs/sft_mma.py --workdir=DIR

Every process of a multi-host run executes this same command (see launch/ and the README).
"""
from absl import app, flags
from ml_collections import config_flags

from mma_jax import logs  # pylint: disable=g-bad-import-order

logs.quiet_import("tensorflow")  # before TFDS imports it: its C++ import notices stay out
# pylint: disable=g-import-not-at-top,wrong-import-position
from mma_jax import distributed
from mma_jax.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sft_mma.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (shared by all "
                               "processes of a multi-host run).", required=True)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-process run; default "
    "$JAX_COORDINATOR_ADDRESS, or auto-detected on TPU VMs and SLURM.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run "
                                      "(default $JAX_NUM_PROCESSES or auto-detected).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based "
                                   "(default $JAX_PROCESS_ID or auto-detected).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()  # libraries' INFO lines only with --verbosity=1
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
