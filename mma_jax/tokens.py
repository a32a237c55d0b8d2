"""The token contract: what every token of a batch row carries, and the keys of a batch.

Every token carries four int vectors, shape [B, L]; the mask (mma_jax.masks) is built from
them alone:

  segment_ids  which packed example the token belongs to, 1, 2, ...; 0 = padding
  modality     TEXT = 0, IMAGE = 1 (later modalities take 2, 3, ...)
  role         PAD = 0, PROMPT = 1 (system/user text and all media), RESPONSE = 2 (the answer
               text: what the loss is on)
  turn         0-based conversation turn; a response belongs to the turn it answers

Sequence order (image then question, question then image, or DOT: both, one after the other)
is data, not model: an input-pipeline option. The mask kind is a config string.
"""
from __future__ import annotations

import jax
import numpy as np

# role
PAD, PROMPT, RESPONSE = 0, 1, 2
# modality
TEXT, IMAGE = 0, 1

# Mask kinds (mma_jax.masks), sequence orders and training stages: the config's vocabulary.
KINDS = ("causal", "mma", "prefix", "mma_conversation")
# Kinds whose prompt rows see nothing a KV cache would not hold when they are computed, so
# decoding turn by turn gives what training saw. mma_conversation (images also see later
# turns' questions) is a study variant, an upper bound: see mma_jax/masks.py.
CACHE_CONSISTENT_KINDS = ("causal", "mma", "prefix")
ORDERS = ("I&T", "T&I", "DOT")
STAGES = ("pt", "sft")

# The four vectors the mask reads.
ID_KEYS = ("segment_ids", "modality", "role", "turn")
# Per-token arrays of one encoded example (mma_jax.data.chat.encode), before packing.
SEQUENCE_KEYS = ("tokens", "modality", "role", "turn", "positions")
# What the model reads: VLM.__call__(batch) and the decoder's prompts.
MODEL_KEYS = ("tokens", "segment_ids", "modality", "role", "turn", "positions", "images")
# What a training row adds (mma_jax.data.pipeline): next-token targets and where the loss is.
TRAIN_KEYS = MODEL_KEYS + ("targets", "loss_mask", "image_valid")


def phases(order: str) -> list[str]:
  """The orders a run trains in, one phase each: DOT is T&I, then as many steps in I&T."""
  if order not in ORDERS:
    raise ValueError(f"Unknown order {order!r}; expected one of {ORDERS} (config.data.order).")
  return ["T&I", "I&T"] if order == "DOT" else [order]


def eval_order(order: str) -> str:
  """The order prompts are asked in: a DOT model ends its training in I&T."""
  return phases(order)[-1]


def model_inputs(batch):
  """The model's keys of a (training) batch."""
  return {k: batch[k] for k in MODEL_KEYS}


def abstract_batch(batch: int, length: int, images: int, image_size: int,
                   train: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a batch: the MODEL_KEYS, and with train=True all of TRAIN_KEYS.

  i32[batch, length] per-token vectors; images f32[batch, images, image_size, image_size, 3].
  """
  seq = jax.ShapeDtypeStruct((batch, length), np.int32)
  out = {k: seq for k in MODEL_KEYS if k != "images"}
  out["images"] = jax.ShapeDtypeStruct((batch, images, image_size, image_size, 3), np.float32)
  if train:
    out["targets"] = seq
    out["loss_mask"] = jax.ShapeDtypeStruct((batch, length), np.bool_)
    out["image_valid"] = jax.ShapeDtypeStruct((batch, images), np.bool_)
  return out
