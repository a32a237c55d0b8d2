"""SFT with MMA on a model preset: --config=configs/preset.py:NAME (mma_jax.models.presets.NAMES:
tiny, llama3.2-1b, llama3.2-3b-siglip, qwen2.5-7b-siglip, phi3.5-mini-siglip, aki-4b).

Randomly initialised at the preset's size: for memory / speed runs and from-scratch training.
To start from released weights, convert them and use configs/from_hf.py instead.
"""
from mma_jax.config import base_config
from mma_jax.models import presets


def get_config(name: str = "tiny"):
  c = base_config()
  c.model = presets.model(name)
  return c
