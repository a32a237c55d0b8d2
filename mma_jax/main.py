"""python -m mma_jax.main --config=configs/sft_mma.py --workdir=DIR"""
from absl import app, flags
from ml_collections import config_flags

from mma_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sft_mma.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
