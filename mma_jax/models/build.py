"""The model of a run: its config from the run config, its parameters' shapes, shardings,
initialisation and restore targets — all from shapes, never from a materialised batch.

Training, evaluation, the mechanism pictures and the memory estimate build the model here, so
a parameter tree is laid out the same way wherever it is created or restored.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mma_jax import checkpoint, sharding, tokens
from mma_jax.models import configs, lora, vlm


def model_config(config, vocab_size: int) -> configs.VLMConfig:
  """config.model as a VLMConfig; llm.vocab_size 0 takes the tokenizer's `vocab_size`."""
  model = config.model.to_dict()
  lora = config.get("lora")
  if lora is not None and lora.rank:
    for tower, targets in (("llm", lora.llm_targets), ("vision", lora.vision_targets)):
      model[tower]["lora"] = {"rank": lora.rank, "alpha": lora.alpha, "targets": tuple(targets)}
  if not model["llm"].get("vocab_size"):
    model["llm"]["vocab_size"] = vocab_size
  elif model["llm"]["vocab_size"] < vocab_size:
    raise ValueError(f"config.model.llm.vocab_size={model['llm']['vocab_size']} is smaller than "
                     f"the tokenizer's {vocab_size}; use 0 to take the tokenizer's size.")
  return configs.vlm_config_from_dict(model)


def init_fn(model: vlm.VLM, seed: int = 0):
  """() -> the parameters (nn.Partitioned boxes), from a one-row dummy batch made in-graph.

  Parameter shapes do not depend on the batch, so the dummy is the smallest that runs every
  module; its zeros are created inside the traced function (no host array becomes a constant).
  """
  shapes = tokens.abstract_batch(1, 8, 1, model.cfg.vision.image_size)

  def init():
    batch = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
    return model.init(jax.random.key(seed), batch, "causal")["params"]

  return init


def abstract_params(cfg: configs.VLMConfig):
  """The parameters' shapes with their logical names (nn.Partitioned of ShapeDtypeStructs)."""
  return jax.eval_shape(init_fn(vlm.VLM(cfg)))


def param_shardings(cfg: configs.VLMConfig, mesh, rules):
  """(unboxed parameter ShapeDtypeStructs, their NamedShardings on `mesh`)."""
  boxed = abstract_params(cfg)
  return sharding.unbox(boxed), sharding.logical_shardings(boxed, mesh, rules)


def restore_target(cfg: configs.VLMConfig, mesh, rules) -> Any:
  """ShapeDtypeStructs carrying the parameters' shardings: Orbax restores straight into that
  layout, and no parameter is initialised only to be replaced."""
  shapes, shardings = param_shardings(cfg, mesh, rules)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def init_params(model: vlm.VLM, seed: int, mesh, rules):
  """Fresh parameters created sharded on `mesh` (nothing materialised whole).

  Returns: (params, their shardings).
  """
  return sharding.sharded_init(init_fn(model, seed), mesh, rules)


def initial_params(model: vlm.VLM, seed: int, mesh, rules, init_from: str = ""):
  """The parameters a run starts from, sharded: fresh from `seed`, or those of the checkpoint
  `init_from` (config.init_from: a PT run, a converted HF directory). A model with LoRA
  adapters takes its base from there and fresh adapters (B = 0: it starts as the base).

  Returns: (params, the init_from checkpoint's step or None).
  """
  if not init_from:
    return init_params(model, seed, mesh, rules)[0], None
  target = restore_target(model.cfg, mesh, rules)
  if not lora.has_adapters(target):
    return checkpoint.load_params(init_from, target)
  base, step = checkpoint.load_params(init_from, lora.split(target)[0])
  fresh = lora.split(init_params(model, seed, mesh, rules)[0])[1]
  return lora.combine(base, fresh), step
