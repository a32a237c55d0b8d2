"""One decoder for Llama 3.x, Qwen2.x and Phi-3.x: GQA, RMSNorm, SwiGLU, RoPE; layers scanned.

The mask comes in as compact TokenIds (mma_jax.attention); the optional KV cache is an explicit
input and output, so prefill and one-token steps are the same call (mma_jax.evaluate.decode).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mma_jax import attention as attn_lib
from mma_jax.models import layers, rope
from mma_jax.models.configs import LLMConfig


class Cache(NamedTuple):
  """KV cache for S slots.

  k, v: f[layers, B, S, K, D] keys (after RoPE) and values.
  segment: i32[B, S] (0 = empty slot); group: i32[B, G, S] key-side group ids.
  """
  k: jax.Array
  v: jax.Array
  segment: jax.Array
  group: jax.Array

  @staticmethod
  def empty(cfg: LLMConfig, batch: int, slots: int, groups: int = 1) -> "Cache":
    shape = (cfg.layers, batch, slots, cfg.kv_heads, cfg.head_dim)
    dtype = layers.dtype_of(cfg.dtype)
    return Cache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros((batch, slots), jnp.int32), jnp.full((batch, groups, slots), -1, jnp.int32))


class DecoderLayer(nn.Module):
  cfg: LLMConfig

  @nn.compact
  def __call__(self, x, kv, sin_cos, q_ids, k_ids, prepared, cache_index):
    """x: f[B, L, E]; kv: None or this layer's (k, v) f[B, S, K, D] cache; prepared: what
    attn_lib.prepare built for the ids, shared by every layer.

    Returns (x, new kv or None).
    """
    cfg, dtype = self.cfg, layers.dtype_of(self.cfg.dtype)
    h = layers.RMSNorm(cfg.rms_eps, dtype, name="input_norm")(x)
    q = layers.dense((cfg.heads, cfg.head_dim), ("embed", "heads", "head_dim"),
                     use_bias=cfg.qkv_bias, dtype=dtype, name="q", lora=cfg.lora)(h)
    k = layers.dense((cfg.kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"),
                     use_bias=cfg.qkv_bias, dtype=dtype, name="k", lora=cfg.lora)(h)
    v = layers.dense((cfg.kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"),
                     use_bias=cfg.qkv_bias, dtype=dtype, name="v", lora=cfg.lora)(h)
    q, k = rope.apply(q, *sin_cos), rope.apply(k, *sin_cos)
    q = layers.constrain(q, ("batch", "length", "heads", "head_dim"))
    k, v = (layers.constrain(t, ("batch", "length", "kv_heads", "head_dim")) for t in (k, v))
    if kv is not None:  # write this chunk into the cache, attend over every slot
      at = (0, cache_index, 0, 0)
      kv = (jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), at),
            jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), at))
      k, v = kv
    out = attn_lib.attention(q, k, v, q_ids, k_ids, cfg.attention, prepared)
    out = layers.constrain(out, ("batch", "length", "heads", "head_dim"))
    out = layers.dense(cfg.hidden, ("heads", "head_dim", "embed"), axis=(-2, -1), dtype=dtype,
                       name="o", lora=cfg.lora)(out)
    x = layers.constrain(x + out, ("batch", "length", "embed"))

    h = layers.RMSNorm(cfg.rms_eps, dtype, name="mlp_norm")(x)
    gate = layers.dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, name="gate",
                        lora=cfg.lora)(h)
    up = layers.dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, name="up", lora=cfg.lora)(h)
    h = layers.constrain(nn.silu(gate) * up, ("batch", "length", "mlp"))
    h = layers.dense(cfg.hidden, ("mlp", "embed"), dtype=dtype, name="down", lora=cfg.lora)(h)
    return layers.constrain(x + h, ("batch", "length", "embed")), kv


class LLM(nn.Module):
  """Decoder-only LM over input embeddings (the VLM mixes image features into them)."""
  cfg: LLMConfig

  def setup(self):
    cfg = self.cfg
    self.embedder = nn.Embed(
        cfg.vocab_size, cfg.hidden, dtype=layers.dtype_of(cfg.dtype),
        embedding_init=layers.param_init(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.layers = layers.scanned(
        DecoderLayer, cfg.layers, cfg.remat,
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        unroll=cfg.unroll)(cfg, name="layers")
    self.final_norm = layers.RMSNorm(cfg.rms_eps, layers.dtype_of(cfg.dtype))
    if not cfg.tie_embeddings:
      self.lm_head = layers.dense(cfg.vocab_size, ("embed", "vocab"), use_bias=cfg.lm_head_bias,
                                  dtype=layers.dtype_of(cfg.dtype))

  def embed(self, tokens):
    """tokens: i32[B, L] -> f[B, L, E]."""
    return self.embedder(tokens)

  def head(self, x):
    """Final-normed hidden states f[B, L, E] -> logits f32[B, L, V]."""
    logits = self.embedder.attend(x) if self.cfg.tie_embeddings else self.lm_head(x)
    return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def __call__(self, x, positions, q_ids: attn_lib.TokenIds, k_ids: attn_lib.TokenIds,
               cache: Cache | None = None, cache_index: Any = 0, logits: bool = True):
    """Run the decoder.

    Args:
      x: f[B, L, E] input embeddings; positions: i32[B, L] RoPE positions.
      q_ids: TokenIds of these L tokens; k_ids: TokenIds of the keys: the same L tokens, or all
        S cache slots when a cache is given (the chunk already written into them).
      cache: optional Cache; the chunk is written at slot cache_index.
      logits: False returns the final-normed hidden states f[B, L, E] instead of the logits.
    Returns: (logits f32[B, L, V], updated layer k/v as (k, v) f[layers, B, S, K, D] or None).
    """
    cfg = self.cfg
    x = layers.constrain(x, ("batch", "length", "embed"))
    sc = rope.sin_cos(positions, cfg.rope, cfg.head_dim)
    kv = None if cache is None else (cache.k, cache.v)
    # The mask's derived data (block plans, sorted once) is built here, not once per layer.
    prepared = attn_lib.prepare(q_ids, k_ids, cfg.head_dim, cfg.attention)
    x, kv = self.layers(x, kv, sc, q_ids, k_ids, prepared, cache_index)
    x = self.final_norm(x)
    return (self.head(x) if logits else x), kv
