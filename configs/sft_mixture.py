"""SFT with MMA on imported data: the paper's SFT mixture by default (mma_jax.data.mixture).

Import each source into one folder first (README, "Training on your own data"), then
  python -m mma_jax.main --config=configs/sft_mixture.py --workdir=runs/sft_mix \
    --config.data.dir=data/records --config.data.tokenizer=path/to/tokenizer.json
The tiny model keeps this runnable on a CPU; for the paper's model set
c.model = presets.model("aki-4b") (384 px images) and a matching tokenizer.
"""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.stage = "sft"
  c.mask = "mma"
  c.data.order = "I&T"
  c.data.source = "records"
  c.data.dir = "data/records"     # where `--out` of the importers pointed
  c.data.mixture = "aki_sft"      # e.g. 'aki_sft,vsr=0.05' or 'mine=1,vqav2=0.5'
  c.data.pack_length = 512        # AKI's maximum SFT length; samples are never truncated
  c.eval.prompt_length = 448
  c.eval.max_new_tokens = 16
  return c
