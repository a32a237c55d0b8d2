"""The VLM: embed text, encode images, scatter image features into the placeholder slots,
run the LLM with the mask built from the per-token vectors."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mma_jax import attention as attn_lib
from mma_jax.models import connector, layers, llm, vit
from mma_jax.models.configs import VLMConfig


def scatter_images(text_embeds, modality, image_embeds):
  """Fill the image placeholder slots of each row, in order, with the image tokens.

  The r-th image token of a row (modality != 0, in sequence order) takes the r-th row of the
  row's image tokens flattened over slots: image n fills placeholders n*T .. n*T + T - 1.

  Args: text_embeds f[B, L, E]; modality i32[B, L]; image_embeds f[B, N, T, E].
  Returns: f[B, L, E].
  """
  b, n, t, e = image_embeds.shape
  flat = image_embeds.reshape(b, n * t, e).astype(text_embeds.dtype)
  is_image = modality != 0
  rank = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, n * t - 1)
  gathered = jnp.take_along_axis(flat, rank[:, :, None], axis=1)
  return jnp.where(is_image[:, :, None], gathered, text_embeds)


class VLM(nn.Module):
  cfg: VLMConfig

  def setup(self):
    cfg = self.cfg
    self.vision = vit.ViT(cfg.vision)
    self.connector = connector.make(cfg.connector, cfg.llm.hidden,
                                    layers.dtype_of(cfg.llm.dtype))
    self.llm = llm.LLM(cfg.llm)

  def encode_images(self, images):
    """images: f[B, N, H, W, 3] in [-1, 1] -> image tokens f[B, N, T, E]."""
    b, n = images.shape[:2]
    images = layers.constrain(images.reshape((b * n,) + images.shape[2:]),
                              ("batch", None, None, None))
    feats = self.vision(images)
    tokens = self.connector(feats)
    return tokens.reshape((b, n) + tokens.shape[1:])

  def __call__(self, batch: Mapping[str, Any], kind: str, cache: llm.Cache | None = None,
               cache_index: Any = 0):
    """Logits for a batch (training) or a chunk written into a KV cache (decoding).

    Args:
      batch: tokens, segment_ids, modality, role, turn, positions i32[B, L]; optional images
        f[B, N, H, W, 3] (needed when the chunk holds image placeholders).
      kind: mask kind, one of mma_jax.masks.KINDS.
      cache: optional llm.Cache; the chunk goes to slots cache_index .. cache_index + L - 1.
    Returns: (logits f32[B, L, V], updated Cache or None).
    """
    x = self.llm.embed(batch["tokens"])
    if batch.get("images") is not None:
      x = scatter_images(x, batch["modality"], self.encode_images(batch["images"]))
    q_ids, k_ids = attn_lib.token_ids(batch["segment_ids"], batch["modality"], batch["role"],
                                      batch["turn"], kind, start=cache_index)
    if cache is not None:  # keys are every cache slot, this chunk's ids written in
      segment = jax.lax.dynamic_update_slice(cache.segment, k_ids.segment, (0, cache_index))
      group = jax.lax.dynamic_update_slice(cache.group, k_ids.group, (0, 0, cache_index))
      index = jnp.broadcast_to(jnp.arange(segment.shape[1]), segment.shape)
      k_ids = attn_lib.TokenIds(segment, index, group)
    logits, kv = self.llm(x, batch["positions"], q_ids, k_ids, cache, cache_index)
    if cache is None:
      return logits, None
    return logits, llm.Cache(kv[0], kv[1], k_ids.segment, k_ids.group)
