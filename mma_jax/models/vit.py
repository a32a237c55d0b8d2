"""SigLIP-style vision tower: patch embedding, learned positions, pre-LN blocks, post-LN."""
from __future__ import annotations

import flax.linen as nn

from mma_jax import attention as attn_lib
from mma_jax.models import layers
from mma_jax.models.configs import ViTConfig


class EncoderLayer(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x, _):
    """x: f[B, P, W] -> (f[B, P, W], None); bidirectional attention over the patches."""
    cfg, dtype = self.cfg, layers.dtype_of(self.cfg.dtype)
    head_dim = cfg.hidden // cfg.heads
    h = layers.layer_norm(cfg.ln_eps, dtype, name="norm1")(x)
    heads = ("batch", "length", "heads", "head_dim")
    qkv = [layers.constrain(layers.dense((cfg.heads, head_dim), ("embed", "heads", "head_dim"),
                                         use_bias=True, dtype=dtype, name=n, lora=cfg.lora)(h),
                            heads)
           for n in ("q", "k", "v")]
    h = layers.constrain(attn_lib.dot_product_attention(*qkv), heads)
    x = x + layers.dense(cfg.hidden, ("heads", "head_dim", "embed"), axis=(-2, -1),
                         use_bias=True, dtype=dtype, name="o", lora=cfg.lora)(h)
    h = layers.layer_norm(cfg.ln_eps, dtype, name="norm2")(x)
    h = layers.dense(cfg.mlp_dim, ("embed", "mlp"), use_bias=True, dtype=dtype, name="fc1",
                     lora=cfg.lora)(h)
    h = layers.constrain(nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
    x = x + layers.dense(cfg.hidden, ("mlp", "embed"), use_bias=True, dtype=dtype, name="fc2",
                         lora=cfg.lora)(h)
    return layers.constrain(x, ("batch", "length", "embed")), None


class ViT(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, images):
    """images: f[B, H, W, 3] in [-1, 1] -> features f[B, P, W] (after post_layernorm)."""
    cfg, dtype = self.cfg, layers.dtype_of(self.cfg.dtype)
    p = cfg.patch_size
    x = nn.Conv(cfg.hidden, (p, p), strides=(p, p), padding="VALID", dtype=dtype, name="patch",
                kernel_init=layers.param_init(nn.initializers.lecun_normal(),
                                              (None, None, None, "embed")),
                bias_init=layers.param_init(nn.initializers.zeros_init(), ("embed",)))(images)
    x = x.reshape(x.shape[0], -1, cfg.hidden)
    pos = self.param("pos_embedding", layers.param_init(nn.initializers.normal(0.02),
                                                        (None, "embed")), (cfg.num_patches, cfg.hidden))
    x = x + pos.astype(dtype)
    x, _ = layers.scanned(EncoderLayer, cfg.layers, cfg.remat, in_axes=(nn.broadcast,),
                          unroll=cfg.unroll)(
        cfg, name="layers")(x, None)
    return layers.layer_norm(cfg.ln_eps, dtype, name="post_norm")(x)
