"""SFT baseline: causal mask, image then question (LLaVA-style)."""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.mask = "causal"
  c.data.order = "I&T"
  return c
