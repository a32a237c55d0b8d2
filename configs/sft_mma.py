"""SFT with modality-mutual attention, image then question (the paper's method)."""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.stage = "sft"
  c.mask = "mma"
  c.data.order = "I&T"
  return c
