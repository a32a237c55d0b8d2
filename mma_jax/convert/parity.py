"""Logit parity: run a converted model and the same directory in transformers on one input.

transformers is only needed here (it is a test extra); models load from local safetensors with
trust_remote_code=False, so nothing downloaded and no remote code runs.
"""
from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

from mma_jax import attention
from mma_jax.convert import hf as hf_conv
from mma_jax.convert import tensors as tio
from mma_jax.models import configs as mc
from mma_jax.models import llm as llm_lib
from mma_jax.models import vit


def llm_logits(model: dict, params: dict, tokens: np.ndarray) -> np.ndarray:
  """Causal logits f32[B, L, V] of the LLM alone for tokens i32[B, L]."""
  cfg = mc.build(mc.LLMConfig, model["llm"], "model.llm")
  net = llm_lib.LLM(cfg)
  ones = jnp.ones(tokens.shape, jnp.int32)
  ids = attention.token_ids(ones, 0 * ones, ones, 0 * ones, "causal")
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)

  @jax.jit
  def run(p, t):
    x = net.apply({"params": p}, t, method=llm_lib.LLM.embed)
    return net.apply({"params": p}, x, positions, *ids)[0]
  return np.asarray(run(params["llm"], jnp.asarray(tokens)))


def vision_features(model: dict, params: dict, images: np.ndarray) -> np.ndarray:
  """Post-LN patch features f32[B, P, W] for images f32[B, H, W, 3] in [-1, 1]."""
  cfg = mc.build(mc.ViTConfig, model["vision"], "model.vision")
  return np.asarray(jax.jit(vit.ViT(cfg).apply)({"params": params["vision"]}, images))


def _torch():
  try:
    import torch
    import transformers
  except ImportError as e:
    raise ImportError("The parity check runs transformers: pip install -e '.[test]'.") from e
  return torch, transformers


def check(directory: str, seq_len: int = 32, batch: int = 2, seed: int = 0) -> dict:
  """Convert `directory`, load it in transformers, compare on random inputs.

  Returns {"kind": "llm" | "vision", "max_abs_diff": float, ...}. For an LLM the inputs are
  random token ids [batch, seq_len]; for a vision tower random images in [-1, 1].
  """
  torch, transformers = _torch()
  cfg = tio.read_config(directory)
  rng = np.random.default_rng(seed)
  kwargs = dict(dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
  if cfg.get("model_type", "").startswith("siglip"):
    conv = hf_conv.import_vision(directory)
    vis = conv.model["vision"]
    images = rng.uniform(-1, 1, (batch, vis["image_size"], vis["image_size"], 3)).astype(np.float32)
    ours = vision_features(conv.model, hf_conv.nested(conv.params), images)
    ref_model = transformers.SiglipVisionModel.from_pretrained(directory, **kwargs).eval()
    with torch.no_grad():
      ref = ref_model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    ref = ref.last_hidden_state.numpy()
    kind = "vision"
  else:
    conv = hf_conv.import_llm(directory)
    tokens = rng.integers(0, conv.model["llm"]["vocab_size"], (batch, seq_len)).astype(np.int32)
    ours = llm_logits(conv.model, hf_conv.nested(conv.params), tokens)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(directory, **kwargs).eval()
    with torch.no_grad():
      ref = ref_model(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    kind = "llm"
  diff = float(np.max(np.abs(ours - ref)))
  return {"kind": kind, "max_abs_diff": diff, "shape": list(ours.shape),
          "ref_max_abs": float(np.max(np.abs(ref)))}
