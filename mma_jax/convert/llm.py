"""HF decoder families <-> mma_jax's LLM: Llama 3.x, Qwen2 / Qwen2.5, Phi-3 / Phi-3.5.

config.json -> LLMConfig fields (and back), and the tensor-name table of each family.
"""
from __future__ import annotations

import math

from mma_jax.convert.rules import (Rule, fused_linear, linear, linear_in, prefixed, reshaped,
                                   rule, same)
from mma_jax.models.configs import LLMConfig, RopeConfig

FAMILIES = ("llama", "qwen2", "phi3")
_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM"}


def _unsupported(family, key, value, want):
  raise ValueError(f"{family} config.json has {key}={value!r}; mma_jax supports {want} only.")


def rope_from_hf(c: dict) -> RopeConfig:
  """RopeConfig from transformers 5 `rope_parameters` or transformers 4 `rope_scaling`."""
  p = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
  kind = p.get("rope_type", p.get("type", "default"))
  kind = {"su": "longrope"}.get(kind, kind)
  theta = float(p.get("rope_theta", c.get("rope_theta", 10000.0)))
  max_pos = int(c.get("max_position_embeddings", 8192))
  if kind == "default":
    return RopeConfig(theta=theta, max_position_embeddings=max_pos)
  if kind == "llama3":
    return RopeConfig(kind="llama3", theta=theta, factor=float(p["factor"]),
                      low_freq_factor=float(p["low_freq_factor"]),
                      high_freq_factor=float(p["high_freq_factor"]),
                      original_max_position_embeddings=int(p["original_max_position_embeddings"]),
                      max_position_embeddings=max_pos)
  if kind == "longrope":
    original = int(p.get("original_max_position_embeddings")
                   or c.get("original_max_position_embeddings") or max_pos)
    # As transformers: the attention factor comes from `factor` if given, else max / original.
    attention = p.get("attention_factor")
    if attention is None:
      factor = p.get("factor") or max_pos / original
      attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeConfig(kind="longrope", theta=theta, original_max_position_embeddings=original,
                      max_position_embeddings=max_pos,
                      short_factor=tuple(float(x) for x in p["short_factor"]),
                      long_factor=tuple(float(x) for x in p["long_factor"]),
                      attention_factor=float(attention))
  raise ValueError(f"config.json rope type {kind!r} is not supported; mma_jax has default, "
                   "llama3 and longrope.")


def rope_to_hf(r: RopeConfig) -> dict:
  p = {"rope_type": r.kind, "rope_theta": r.theta}
  if r.kind == "llama3":
    p.update(factor=r.factor, low_freq_factor=r.low_freq_factor,
             high_freq_factor=r.high_freq_factor,
             original_max_position_embeddings=r.original_max_position_embeddings)
  elif r.kind == "longrope":
    p.update(short_factor=list(r.short_factor), long_factor=list(r.long_factor),
             original_max_position_embeddings=r.original_max_position_embeddings,
             attention_factor=r.attention_factor)
  return p


def family_of(c: dict) -> str:
  family = c.get("model_type")
  if family not in FAMILIES:
    raise ValueError(f"config.json model_type={family!r}: supported LLM families are "
                     f"{FAMILIES} (Llama 3.x, Qwen2.x, Phi-3.x).")
  return family


def config_from_hf(c: dict) -> LLMConfig:
  family = family_of(c)
  if c.get("hidden_act", "silu") != "silu":
    _unsupported(family, "hidden_act", c["hidden_act"], "silu")
  if family == "llama":
    for key in ("attention_bias", "mlp_bias"):
      if c.get(key):
        _unsupported(family, key, c[key], "False")
  if family == "qwen2" and c.get("use_sliding_window"):
    _unsupported(family, "use_sliding_window", True, "False (full attention)")
  rope_params = c.get("rope_parameters") or {}
  partial = rope_params.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    _unsupported(family, "partial_rotary_factor", partial, "1.0")
  heads = c["num_attention_heads"]
  return LLMConfig(
      vocab_size=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
      heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
      head_dim=c.get("head_dim") or c["hidden_size"] // heads, mlp_dim=c["intermediate_size"],
      rms_eps=float(c.get("rms_norm_eps", 1e-6)), rope=rope_from_hf(c),
      qkv_bias=family == "qwen2", tie_embeddings=bool(c.get("tie_word_embeddings", False)))


def config_to_hf(cfg: LLMConfig, family: str, extra: dict | None = None) -> dict:
  """config.json for transformers (rope in both the 5.x and the 4.x spelling)."""
  if family not in FAMILIES:
    raise ValueError(f"Unknown family {family!r}; choose one of {FAMILIES}.")
  if cfg.lm_head_bias:
    raise ValueError("This LLM has an output bias (AKI's decoupled head), which stock "
                     f"{_ARCH[family]} cannot hold; it cannot be exported as {family}.")
  if cfg.qkv_bias != (family == "qwen2"):
    raise ValueError(f"qkv_bias={cfg.qkv_bias} does not fit family {family!r}: use 'qwen2' for "
                     "models with q/k/v biases and 'llama' or 'phi3' without.")
  rope = rope_to_hf(cfg.rope)
  c = {"architectures": [_ARCH[family]], "model_type": family, "vocab_size": cfg.vocab_size,
       "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
       "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
       "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_dim, "rms_norm_eps": cfg.rms_eps,
       "hidden_act": "silu", "tie_word_embeddings": cfg.tie_embeddings,
       "max_position_embeddings": cfg.rope.max_position_embeddings,
       "rope_parameters": rope, "rope_theta": cfg.rope.theta,
       "rope_scaling": None if cfg.rope.kind == "default" else
       {k: v for k, v in rope.items() if k != "rope_theta"},
       "torch_dtype": "float32"}
  if family == "phi3" and cfg.rope.kind == "longrope":
    c["original_max_position_embeddings"] = cfg.rope.original_max_position_embeddings
  if family == "qwen2":
    c["use_sliding_window"] = False
  c.update(extra or {})
  return c


def rules(cfg: LLMConfig, family: str, hf_prefix: str = "", param_prefix: str = "llm",
          embeddings: bool = True) -> list[Rule]:
  """Tensor table of one family. embeddings=False leaves out embed_tokens / lm_head (AKI has
  its own decoupled ones)."""
  h, k, d, e, f, n = cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.hidden, cfg.mlp_dim, cfg.layers
  p = "model.layers.{i}."
  table = [rule("model.norm.weight", "final_norm/scale", same())]
  if embeddings:
    table.append(rule("model.embed_tokens.weight", "embedder/embedding", same()))
    if not cfg.tie_embeddings:
      table.append(rule("lm_head.weight", "lm_head/kernel", linear(cfg.vocab_size)))
  if family == "phi3":
    table += [rule(p + "self_attn.qkv_proj.weight", ("layers/q/kernel", "layers/k/kernel",
                                                     "layers/v/kernel"),
                   fused_linear((h, d), (k, d), (k, d)), n),
              rule(p + "mlp.gate_up_proj.weight", ("layers/gate/kernel", "layers/up/kernel"),
                   fused_linear((f,), (f,)), n)]
  else:
    for name, heads in (("q", h), ("k", k), ("v", k)):
      table.append(rule(p + f"self_attn.{name}_proj.weight", f"layers/{name}/kernel",
                        linear(heads, d), n))
      if cfg.qkv_bias:
        table.append(rule(p + f"self_attn.{name}_proj.bias", f"layers/{name}/bias",
                          reshaped(heads, d), n))
    table += [rule(p + "mlp.gate_proj.weight", "layers/gate/kernel", linear(f), n),
              rule(p + "mlp.up_proj.weight", "layers/up/kernel", linear(f), n)]
  table += [rule(p + "self_attn.o_proj.weight", "layers/o/kernel", linear_in(h, d), n),
            rule(p + "mlp.down_proj.weight", "layers/down/kernel", linear(e), n),
            rule(p + "input_layernorm.weight", "layers/input_norm/scale", same(), n),
            rule(p + "post_attention_layernorm.weight", "layers/mlp_norm/scale", same(), n)]
  return prefixed(table, hf_prefix, param_prefix)

