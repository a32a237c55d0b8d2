"""HF SigLIP vision towers <-> mma_jax's ViT (so400m-patch14-384 and the smaller ones).

Reads a SiglipVisionModel directory, or a full SiglipModel one (its text tower is ignored).
The attention-pool head is not used by a VLM (features are the post-LN patch states), so it is
ignored on import and exported as vision_use_head=False.
"""
from __future__ import annotations

import re

from mma_jax.convert.rules import Rule, conv_patch, linear, linear_in, prefixed, reshaped, rule, same
from mma_jax.models.configs import ViTConfig

# Tensors a SigLIP checkpoint may hold that a VLM's vision tower never reads.
IGNORED = re.compile(r"(.*\.)?head\..*|text_model\..*|logit_scale|logit_bias")


def vision_config_of(c: dict) -> dict:
  """The vision part of a SiglipVisionConfig or SiglipConfig config.json."""
  if c.get("model_type") == "siglip":
    return c["vision_config"]
  if c.get("model_type") != "siglip_vision_model":
    raise ValueError(f"config.json model_type={c.get('model_type')!r}: expected a SigLIP "
                     "checkpoint ('siglip' or 'siglip_vision_model').")
  return c


# transformers 4.x saves a SiglipVisionModel as vision_model.*, 5.x without the prefix (and
# reads both); exports use the prefixed layout so that both versions load them.
EXPORT_PREFIX = "vision_model."


def hf_prefix_of(c: dict, names=()) -> str:
  """The prefix of the vision tensors: always vision_model. in a full SiglipModel; in a
  SiglipVisionModel directory it depends on the transformers version that saved it."""
  if c.get("model_type") == "siglip" or any(n.startswith(EXPORT_PREFIX) for n in names):
    return EXPORT_PREFIX
  return ""


def config_from_hf(c: dict) -> ViTConfig:
  v = vision_config_of(c)
  if v.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
    raise ValueError(f"SigLIP hidden_act={v['hidden_act']!r}; mma_jax's ViT uses "
                     "gelu_pytorch_tanh only.")
  return ViTConfig(image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 16),
                   hidden=v.get("hidden_size", 768), layers=v.get("num_hidden_layers", 12),
                   heads=v.get("num_attention_heads", 12), mlp_dim=v.get("intermediate_size", 3072),
                   ln_eps=float(v.get("layer_norm_eps", 1e-6)))


def config_to_hf(cfg: ViTConfig) -> dict:
  return {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model",
          "hidden_size": cfg.hidden, "intermediate_size": cfg.mlp_dim,
          "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
          "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": 3,
          "layer_norm_eps": cfg.ln_eps, "hidden_act": "gelu_pytorch_tanh",
          "vision_use_head": False, "torch_dtype": "float32"}


def rules(cfg: ViTConfig, hf_prefix: str = "", param_prefix: str = "vision") -> list[Rule]:
  h, w, n = cfg.heads, cfg.hidden, cfg.layers
  d = w // h
  p = "encoder.layers.{i}."
  table = [rule("embeddings.patch_embedding.weight", "patch/kernel", conv_patch()),
           rule("embeddings.patch_embedding.bias", "patch/bias", same()),
           rule("embeddings.position_embedding.weight", "pos_embedding", same()),
           rule("post_layernorm.weight", "post_norm/scale", same()),
           rule("post_layernorm.bias", "post_norm/bias", same())]
  for hf, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
    table += [rule(p + f"self_attn.{hf}.weight", f"layers/{ours}/kernel", linear(h, d), n),
              rule(p + f"self_attn.{hf}.bias", f"layers/{ours}/bias", reshaped(h, d), n)]
  table += [rule(p + "self_attn.out_proj.weight", "layers/o/kernel", linear_in(h, d), n),
            rule(p + "self_attn.out_proj.bias", "layers/o/bias", same(), n),
            rule(p + "mlp.fc1.weight", "layers/fc1/kernel", linear(cfg.mlp_dim), n),
            rule(p + "mlp.fc1.bias", "layers/fc1/bias", same(), n),
            rule(p + "mlp.fc2.weight", "layers/fc2/kernel", linear(w), n),
            rule(p + "mlp.fc2.bias", "layers/fc2/bias", same(), n)]
  for hf, ours in (("layer_norm1", "norm1"), ("layer_norm2", "norm2")):
    table += [rule(p + f"{hf}.weight", f"layers/{ours}/scale", same(), n),
              rule(p + f"{hf}.bias", f"layers/{ours}/bias", same(), n)]
  return prefixed(table, hf_prefix, param_prefix)
