"""Rotary position embedding with HF's scaling variants: default, llama3, longrope (Phi-3)."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from mma_jax.models.configs import RopeConfig


def _base_inv_freq(cfg: RopeConfig, head_dim: int) -> np.ndarray:
  return 1.0 / cfg.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def _llama3(cfg: RopeConfig, inv_freq: np.ndarray) -> np.ndarray:
  """Llama 3.1: long wavelengths divided by factor, short kept, the band between blended."""
  low_wavelen = cfg.original_max_position_embeddings / cfg.low_freq_factor
  high_wavelen = cfg.original_max_position_embeddings / cfg.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / cfg.factor, inv_freq)
  smooth = ((cfg.original_max_position_embeddings / wavelen - cfg.low_freq_factor)
            / (cfg.high_freq_factor - cfg.low_freq_factor))
  blended = (1 - smooth) * scaled / cfg.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, blended, scaled)


def longrope_attention_factor(cfg: RopeConfig) -> float:
  if cfg.attention_factor is not None:
    return cfg.attention_factor
  scale = cfg.max_position_embeddings / cfg.original_max_position_embeddings
  if scale <= 1.0:
    return 1.0
  return math.sqrt(1 + math.log(scale) / math.log(cfg.original_max_position_embeddings))


def sin_cos(positions, cfg: RopeConfig, head_dim: int):
  """Rotation angles for each token.

  Args: positions i32[B, L]; cfg; head_dim.
  Returns: (sin, cos), each f32[B, L, head_dim // 2], already multiplied by the attention factor.
  """
  inv_freq = _base_inv_freq(cfg, head_dim)
  factor = 1.0
  if cfg.kind == "llama3":
    inv_freq = _llama3(cfg, inv_freq)
  elif cfg.kind == "longrope":
    # HF picks the factor set per call from the largest position it sees.
    short = inv_freq / np.asarray(cfg.short_factor, np.float64)
    long = inv_freq / np.asarray(cfg.long_factor, np.float64)
    use_long = jnp.max(positions) + 1 > cfg.original_max_position_embeddings
    inv_freq = jnp.where(use_long, jnp.asarray(long, jnp.float32), jnp.asarray(short, jnp.float32))
    factor = longrope_attention_factor(cfg)
  elif cfg.kind != "default":
    raise ValueError(f"Unknown rope kind {cfg.kind!r}.")
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
  return jnp.sin(angles) * factor, jnp.cos(angles) * factor


def apply(x, sin, cos):
  """Rotate x: f[B, L, H, D] by (sin, cos) f32[B, L, D/2] (HF's half-split convention)."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
