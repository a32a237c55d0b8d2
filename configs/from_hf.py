"""SFT with MMA starting from a converted HF checkpoint: --config=configs/from_hf.py:DIR

DIR is written by `python -m mma_jax.convert` (model.json, params/, tokenizer.json); the model
config, the initial parameters and the tokenizer with its chat template all come from it.
"""
import json
import os

import ml_collections

from mma_jax.config import base_config


def get_config(directory: str):
  c = base_config()
  with open(os.path.join(directory, "model.json")) as f:
    meta = json.load(f)
  c.model = ml_collections.ConfigDict(meta["model"])
  c.init_from = directory
  c.data.tokenizer = os.path.join(directory, "tokenizer.json")
  c.data.template = meta.get("template") or "shapes"
  c.optim.lr = 2e-5          # AKI's SFT learning rate
  c.optim.warmup_steps = 150
  return c
