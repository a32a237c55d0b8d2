"""SFT baseline: causal mask, question then image (T&I), so the image is encoded after the text."""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.mask = "causal"
  c.data.order = "T&I"
  return c
