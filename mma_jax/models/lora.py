"""LoRA adapters in a parameter tree: which leaves they are, and merging them into the kernels.

A targeted Dense module (models/layers.py) holds kernel f[*stack, *in, *out], lora_a
f32[*stack, *in, rank] and lora_b f32[*stack, rank, *out] (*stack: the scanned layers axis);
it computes x . kernel + scale * (x . lora_a) . lora_b. Merging folds the adapter into the
kernel, kernel + scale * lora_a . lora_b, which gives the same function without adapters:
what export writes and what the base model architecture loads.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from mma_jax.models.configs import VLMConfig

ADAPTER_KEYS = ("lora_a", "lora_b")


def has_adapters(params: Mapping[str, Any]) -> bool:
  if not isinstance(params, Mapping):
    return False
  return "lora_a" in params or any(has_adapters(v) for v in params.values())


def delta(a, b, kernel_ndim: int):
  """lora_a . lora_b in the kernel's shape (batched over the leading stack axes).

  a: [*stack, *in, rank]; b: [*stack, rank, *out] with len(stack + in + out) == kernel_ndim.
  """
  xp = np if isinstance(a, np.ndarray) else jnp
  stack = a.ndim + b.ndim - 2 - kernel_ndim
  ins, outs = a.shape[stack:-1], b.shape[stack + 1:]
  a2 = a.reshape(a.shape[:stack] + (math.prod(ins), a.shape[-1]))
  b2 = b.reshape(b.shape[:stack] + (b.shape[stack], math.prod(outs)))
  return xp.matmul(a2, b2).reshape(a.shape[:stack] + ins + outs)


def merge_tree(params: Mapping[str, Any], scale: float) -> dict:
  """The tree with every adapter folded into its kernel and the adapter leaves removed."""
  out = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      out[key] = merge_tree(value, scale)
    elif key not in ADAPTER_KEYS:
      out[key] = value
  if "lora_a" in params:
    kernel = params["kernel"]
    d = delta(params["lora_a"], params["lora_b"], kernel.ndim) * scale
    out["kernel"] = (kernel.astype(np.float32) + d).astype(kernel.dtype)
  return out


def merge(params: Mapping[str, Any], cfg: VLMConfig) -> dict:
  """A VLM parameter tree (any component subset) with its adapters merged, each component
  with its own scale (cfg.llm.lora / cfg.vision.lora)."""
  scales = {"llm": cfg.llm.lora.scale, "vision": cfg.vision.lora.scale}
  return {k: merge_tree(v, scales.get(k, 0.0)) if isinstance(v, Mapping) else v
          for k, v in params.items()}


def split(params: Mapping[str, Any]) -> tuple[dict, dict]:
  """(base, adapters): the tree without its adapter leaves, and with only them (nested dicts;
  works on arrays, ShapeDtypeStructs or shardings alike)."""
  base, adapters = {}, {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      b, a = split(value)
      base[key] = b
      if a:
        adapters[key] = a
    elif key in ADAPTER_KEYS:
      adapters[key] = value
    else:
      base[key] = value
  return base, adapters


def combine(base: Mapping[str, Any], adapters: Mapping[str, Any]) -> dict:
  """The inverse of split."""
  out = dict(base)
  for key, value in adapters.items():
    out[key] = combine(base.get(key, {}), value) if isinstance(value, Mapping) else value
  return out
