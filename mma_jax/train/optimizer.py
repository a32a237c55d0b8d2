"""AdamW with warmup + cosine, clipping, freezing, and per-group learning rates by regex.

Parameters are named by their paths ('vision/layers/q/kernel'). config.optim.freeze regexes
freeze (zero updates); config.optim.groups gives a group of parameters its own peak learning
rate and weight decay, as LLaVA-NeXT's --mm_vision_tower_lr does:

  groups = (("vision", "vision/.*", 2e-6, 0.0), ("connector", "connector/.*", 1e-3, 0.0))

(name, regex, lr, weight_decay), first full match wins; the rest use optim.lr / weight_decay.
Every group follows the same warmup + cosine shape. Gradients are clipped by their global norm
over all trainable parameters, before the groups part ways.
"""
from __future__ import annotations

import re
from typing import Sequence

import jax
import optax


def param_path(path) -> str:
  """'vision/layers/q/kernel' from a jax key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


ADAPTER = re.compile(r".*/lora_[ab]")


def trainable_mask(params, freeze: Sequence[str]):
  """Pytree of bools: False where the parameter path fully matches one of the freeze regexes,
  and, when the tree holds LoRA adapters, everywhere but on them (the base is frozen)."""
  patterns = [re.compile(p) for p in freeze]
  paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  adapters_only = any(ADAPTER.fullmatch(p) for p in paths)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: (not any(p.fullmatch(param_path(path)) for p in patterns)
                       and (not adapters_only or bool(ADAPTER.fullmatch(param_path(path))))),
      params)


def schedule(lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float):
  """Linear warmup to lr, then cosine down to lr * min_lr_ratio at total_steps.

  The first step already moves (lr / warmup_steps): a zero first step would be wasted.
  """
  return optax.warmup_cosine_decay_schedule(
      init_value=lr / max(warmup_steps, 1), peak_value=lr, warmup_steps=max(warmup_steps, 1),
      decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * min_lr_ratio)


def stored(params, optim_cfg):
  """ShapeDtypeStructs of `params` as a run keeps them: frozen ones (trainable_mask) in
  config.optim.frozen_dtype when set (e.g. LoRA's bfloat16 base); shardings kept."""
  frozen_dtype = optim_cfg.get("frozen_dtype", "")
  trainable = trainable_mask(params, optim_cfg.freeze)
  return jax.tree_util.tree_map(
      lambda x, t: jax.ShapeDtypeStruct(x.shape, x.dtype if t or not frozen_dtype else frozen_dtype,
                                        sharding=getattr(x, "sharding", None)),
      params, trainable)


DEFAULT_GROUP = "default"


def groups(optim_cfg) -> list[tuple[str, str, float, float]]:
  """config.optim.groups checked: [(name, regex, lr, weight_decay)]; errors name the key."""
  out = []
  for i, g in enumerate(getattr(optim_cfg, "groups", ()) or ()):
    where = f"config.optim.groups[{i}]={tuple(g) if isinstance(g, (list, tuple)) else g!r}"
    if not isinstance(g, (list, tuple)) or len(g) != 4:
      raise ValueError(f"{where}: give (name, regex, lr, weight_decay).")
    name, regex, lr, wd = g
    if not isinstance(name, str) or name in (DEFAULT_GROUP, "freeze") or name in (
        n for n, *_ in out):
      raise ValueError(f"{where}: the name must be a new string, not 'default' or 'freeze'.")
    try:
      re.compile(regex)
    except (re.error, TypeError) as e:
      raise ValueError(f"{where}: bad regex ({e}).") from None
    if not float(lr) > 0 or float(wd) < 0:
      raise ValueError(f"{where}: lr must be positive and weight_decay not negative.")
    out.append((name, regex, float(lr), float(wd)))
  return out


def group_labels(params, optim_cfg):
  """Pytree of group names (DEFAULT_GROUP where no regex of config.optim.groups matches)."""
  patterns = [(name, re.compile(regex)) for name, regex, _, _ in groups(optim_cfg)]

  def label(path, _):
    p = param_path(path)
    return next((name for name, pattern in patterns if pattern.fullmatch(p)), DEFAULT_GROUP)

  return jax.tree_util.tree_map_with_path(label, params)


def _hyper(optim_cfg) -> dict[str, tuple[float, float]]:
  """Group name -> (peak lr, weight decay); DEFAULT_GROUP: config.optim's own."""
  return {DEFAULT_GROUP: (optim_cfg.lr, optim_cfg.weight_decay),
          **{name: (lr, wd) for name, _, lr, wd in groups(optim_cfg)}}


def group_schedules(optim_cfg, total_steps: int) -> dict[str, optax.Schedule]:
  """Group name -> its learning-rate schedule (DEFAULT_GROUP: config.optim.lr)."""
  return {name: schedule(lr, optim_cfg.warmup_steps, total_steps, optim_cfg.min_lr_ratio)
          for name, (lr, _) in _hyper(optim_cfg).items()}


def make(optim_cfg, total_steps: int, params):
  """optax transform from config.optim; frozen parameters get exactly zero updates.

  params: the parameter tree (arrays or ShapeDtypeStructs) whose paths the regexes match.
  Returns: (optimizer, the default group's lr schedule; all: group_schedules).
  """
  schedules = group_schedules(optim_cfg, total_steps)
  adamw = {name: optax.adamw(schedules[name], b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=wd)
           for name, (_, wd) in _hyper(optim_cfg).items()}
  if len(adamw) == 1:
    update = adamw[DEFAULT_GROUP]
  else:  # labels from the (masked) tree the inner transform sees: trainable parameters only
    update = optax.multi_transform(adamw, lambda tree: group_labels(tree, optim_cfg))
  train = optax.chain(
      optax.clip_by_global_norm(optim_cfg.clip_norm) if optim_cfg.clip_norm > 0 else optax.identity(),
      update)
  mask = trainable_mask(params, optim_cfg.freeze)
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
  return (optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels),
          schedules[DEFAULT_GROUP])
