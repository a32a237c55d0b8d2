"""python -m mma_jax.main --config=configs/sft_mma.py --workdir=DIR

Every process of a multi-host run executes this same command (see launch/ and the README).
A mistake in the flags, the config or the files is one line and exit status 2 (mma_jax.cli).
"""
from absl import app, flags
from ml_collections import config_flags

from mma_jax import logs  # pylint: disable=g-bad-import-order

logs.quiet_import("tensorflow")  # before TFDS imports it: its C++ import notices stay out
# pylint: disable=g-import-not-at-top,wrong-import-position
from mma_jax import cli, distributed
from mma_jax.train.loop import train_and_evaluate

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined under mma_jax.cli's guard: --config.KEY overrides are checked right here.
  config_flags.DEFINE_config_file("config", "configs/sft_mma.py", "Config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (shared by all "
                      "processes of a multi-host run).", required=True)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a "
                      "multi-process run; default $JAX_COORDINATOR_ADDRESS, or auto-detected "
                      "on TPU VMs and SLURM.")
  flags.DEFINE_integer("num_processes", None, "Processes in the run (default "
                       "$JAX_NUM_PROCESSES or auto-detected).")
  flags.DEFINE_integer("process_id", None, "This process's index, 0-based (default "
                       "$JAX_PROCESS_ID or auto-detected).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()  # libraries' INFO lines only with --verbosity=1
  config = cli.config()
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run_absl(main, _define_flags)
