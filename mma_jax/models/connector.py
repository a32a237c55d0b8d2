"""Vision-language connectors: LLaVA-1.5's 2-layer MLP and AKI's Perceiver resampler."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mma_jax import attention as attn_lib
from mma_jax.models import layers
from mma_jax.models.configs import ConnectorConfig


class MLPConnector(nn.Module):
  out_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: f[B, P, W] -> f[B, P, E], one token per patch."""
    x = layers.dense(self.out_dim, ("vision_embed", "embed"), use_bias=True, dtype=self.dtype,
                     name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return layers.dense(self.out_dim, ("embed", None), use_bias=True, dtype=self.dtype,
                        name="fc2")(x)


class PerceiverBlock(nn.Module):
  cfg: ConnectorConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, media):
    """latents: f[B, N, W]; media: f[B, P, W]. Latents attend over [media; latents]."""
    cfg = self.cfg
    names = ("embed", "heads", "head_dim")
    media_n = layers.layer_norm(cfg.ln_eps, self.dtype, name="norm_media")(media)
    lat_n = layers.layer_norm(cfg.ln_eps, self.dtype, name="norm_latents")(latents)
    q = layers.dense((cfg.heads, cfg.dim_head), names, dtype=self.dtype, name="q")(lat_n)
    kv_in = jnp.concatenate([media_n, lat_n], axis=1)
    k = layers.dense((cfg.heads, cfg.dim_head), names, dtype=self.dtype, name="k")(kv_in)
    v = layers.dense((cfg.heads, cfg.dim_head), names, dtype=self.dtype, name="v")(kv_in)
    out = attn_lib.dot_product_attention(q, k, v)
    latents = latents + layers.dense(latents.shape[-1], ("heads", "head_dim", "embed"),
                                     axis=(-2, -1), dtype=self.dtype, name="o")(out)
    h = layers.layer_norm(cfg.ln_eps, self.dtype, name="ff_norm")(latents)
    h = layers.dense(latents.shape[-1] * cfg.ff_mult, ("embed", "mlp"), dtype=self.dtype,
                     name="ff1")(h)
    h = nn.gelu(h, approximate=False)
    return latents + layers.dense(latents.shape[-1], ("mlp", "embed"), dtype=self.dtype,
                                  name="ff2")(h), None


class PerceiverResampler(nn.Module):
  """AKI's resampler: num_latents learned queries, depth blocks, LayerNorm, projection."""
  cfg: ConnectorConfig
  out_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, media):
    """media: f[B, P, W] -> f[B, num_latents, E]."""
    cfg, width = self.cfg, media.shape[-1]
    latents = self.param("latents", layers.param_init(nn.initializers.normal(1.0), (None, "embed")),
                         (cfg.num_latents, width))
    x = jnp.broadcast_to(latents.astype(self.dtype), (media.shape[0],) + latents.shape)
    x, _ = layers.scanned(PerceiverBlock, cfg.depth, "none", in_axes=(nn.broadcast,))(
        cfg, self.dtype, name="layers")(x, media)
    x = layers.layer_norm(cfg.ln_eps, self.dtype, name="norm")(x)
    return layers.dense(self.out_dim, ("vision_embed", "embed"), use_bias=True, dtype=self.dtype,
                        name="projection")(x)


def make(cfg: ConnectorConfig, out_dim: int, dtype, name="connector") -> nn.Module:
  if cfg.kind == "mlp":
    return MLPConnector(out_dim, dtype, name=name)
  if cfg.kind == "perceiver":
    return PerceiverResampler(cfg, out_dim, dtype, name=name)
  raise ValueError(f"Unknown connector kind {cfg.kind!r}; expected 'mlp' or 'perceiver'.")
