"""Pre-training on captions: connector and LLM trained, vision tower trainable here too.

MMA changes nothing in PT (captions have no prompt text), so the mask stays causal.
"""
from mma_jax.config import base_config


def get_config():
  c = base_config()
  c.stage = "pt"
  c.mask = "causal"
  c.optim.freeze = ()          # set to ("vision/.*",) to keep the vision tower frozen
  c.data.pack_length = 128
  c.train.steps = 600
  return c
