"""SFT baseline: dual-order training, T&I steps then the same number of I&T steps (causal)."""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.mask = "causal"
  c.data.order = "DOT"
  return c
