"""AdamW with warmup + cosine, clipping, and freezing by regex on parameter paths."""
from __future__ import annotations

import re
from typing import Sequence

import jax
import optax


def param_path(path) -> str:
  """'vision/layers/q/kernel' from a jax key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_mask(params, freeze: Sequence[str]):
  """Pytree of bools: False where the parameter path fully matches one of the freeze regexes."""
  patterns = [re.compile(p) for p in freeze]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(p.fullmatch(param_path(path)) for p in patterns), params)


def schedule(lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float):
  """Linear warmup to lr, then cosine down to lr * min_lr_ratio at total_steps.

  The first step already moves (lr / warmup_steps): a zero first step would be wasted.
  """
  return optax.warmup_cosine_decay_schedule(
      init_value=lr / max(warmup_steps, 1), peak_value=lr, warmup_steps=max(warmup_steps, 1),
      decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * min_lr_ratio)


def make(optim_cfg, total_steps: int, params):
  """optax transform from config.optim; frozen parameters get exactly zero updates.

  Returns: (optimizer, lr schedule).
  """
  lr = schedule(optim_cfg.lr, optim_cfg.warmup_steps, total_steps, optim_cfg.min_lr_ratio)
  adamw = optax.chain(
      optax.clip_by_global_norm(optim_cfg.clip_norm) if optim_cfg.clip_norm > 0 else optax.identity(),
      optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay))
  mask = trainable_mask(params, optim_cfg.freeze)
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
  return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels), lr
