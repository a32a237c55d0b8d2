"""SFT with a prefix-LM mask (PaliGemma): the whole prompt of a turn is bidirectional."""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.mask = "prefix"
  c.data.order = "I&T"
  return c
