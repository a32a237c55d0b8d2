"""The VLM: embed text, encode images, scatter image features into the placeholder slots,
run the LLM with the mask built from the per-token vectors.

Image slots that no placeholder reads are empty; with model.vision.images_per_row the tower
encodes only the others (encode_used), in passes of a static size."""
from __future__ import annotations

import math
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
  return _fill(text_embeds, modality, image_embeds.reshape(b, n * t, e),
               jnp.zeros((b,), jnp.int32))


def _fill(text_embeds, modality, tokens, start):
  """Row b's r-th image token takes token start[b] + r of its group's flat image tokens.

  Args: text_embeds f[B, L, E]; modality i32[B, L]; tokens f[G, M, E] (G divides B: rows
    b*G//B .. share group b // (B//G)); start i32[B].
  Returns: f[B, L, E].
  """
  b, length, e = text_embeds.shape
  g, m = tokens.shape[:2]
  is_image = modality != 0
  rank = jnp.clip(start[:, None] + jnp.cumsum(is_image, axis=1) - 1, 0, m - 1)
  gathered = jnp.take_along_axis(tokens.astype(text_embeds.dtype),
                                 rank.reshape(g, (b // g) * length)[:, :, None], axis=1)
  return jnp.where(is_image[:, :, None], gathered.reshape(b, length, e), text_embeds)


def used_slots(modality, tokens_per_image: int, slots: int):
  """Image slots that placeholders read: a row's first ceil(image tokens / T) slots.

  Args: modality i32[B, L]. Returns: bool[B, N] (N = slots).
  """
  images = -(-jnp.sum(modality != 0, axis=1) // tokens_per_image)
  return jnp.arange(slots)[None, :] < images[:, None]


def batch_groups(rows: int) -> int:
  """How many ways the ambient mesh splits the batch ("batch" rule); 1 outside a mesh or when
  it does not divide `rows`. Images are compacted within a group, so they stay on its device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  axes = (nn.logical_to_mesh_axes(("batch",)) or (None,))[0]
  axes = axes if isinstance(axes, tuple) else (axes,)
  n = math.prod(mesh.shape[a] for a in axes if a is not None)
  return n if rows % n == 0 else 1


def encode_used(encode, images, used, per_pass: int):
  """Encode only the used image slots, `per_pass` images per group at a time.

  Slots are compacted (used first, in order) within each batch group; pass p encodes compact
  images p*K .. p*K + K - 1 of every group, and runs only if some group has that many used
  images (lax.cond), so empty slots cost nothing and shapes stay static.

  Args:
    encode: f[G*K, H, W, 3] -> f[G*K, T, E] (the tower and the connector).
    images: f[B, N, H, W, 3]; used: bool[B, N]; per_pass: K, images per group and pass.
  Returns: (tokens f[G, P*K*T, E] of each group's used images in order, start i32[B]: the
    compact index of each row's first image times T) for _fill.
  """
  b, n = used.shape
  g = batch_groups(b)
  slots = (b // g) * n
  k = min(per_pass, slots)
  passes = -(-slots // k)
  per_row = jnp.sum(used, axis=1).reshape(g, b // g)
  start = (jnp.cumsum(per_row, axis=1) - per_row).reshape(b)  # a row's first image, compacted
  used = used.reshape(g, slots)
  order = jnp.argsort(~used, axis=1, stable=True)  # used slots first, in slot order
  order = jnp.pad(order, ((0, 0), (0, passes * k - slots)))  # the tail is never read back
  needed = jnp.max(jnp.sum(used, axis=1))
  flat = layers.constrain(images.reshape((g, slots) + images.shape[2:]),
                          ("batch", None, None, None, None))
  out = jax.eval_shape(encode, jax.ShapeDtypeStruct((g * k,) + images.shape[2:], images.dtype))

  def one_pass(_, p):
    def run():
      idx = jax.lax.dynamic_slice_in_dim(order, p * k, k, axis=1)
      picked = jax.vmap(lambda f, i: f[i])(flat, idx)  # f[G, K, H, W, 3]
      return encode(picked.reshape((g * k,) + images.shape[2:]))
    tokens = jax.lax.cond(p * k < needed, run, lambda: jnp.zeros(out.shape, out.dtype))
    return None, tokens.reshape((g, k) + out.shape[1:])

  _, tokens = jax.lax.scan(one_pass, None, jnp.arange(passes))  # f[P, G, K, T, E]
  t, e = out.shape[1:]
  tokens = jnp.moveaxis(tokens, 0, 1).reshape(g, passes * k * t, e)
  return tokens, start * t


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
    tokens = self._encode(images.reshape((b * n,) + images.shape[2:]))
    return tokens.reshape((b, n) + tokens.shape[1:])

  def _encode(self, images):
    """images: f[K, H, W, 3] -> image tokens f[K, T, E] (the tower, then the connector)."""
    images = layers.constrain(images, ("batch", None, None, None))
    return self.connector(self.vision(images))

  def embed_images(self, x, modality, images):
    """The text embeddings x: f[B, L, E] with the image tokens of images: f[B, N, H, W, 3] in
    their placeholders. With vision.images_per_row, only the slots that placeholders read go
    through the tower (encode_used); else every slot does."""
    per_row = self.cfg.vision.images_per_row
    if not per_row or self.is_initializing():
      return scatter_images(x, modality, self.encode_images(images))
    # A pure function of the parameters: lax.cond and lax.scan take no bound Flax module.
    module, variables = self.unbind()
    encode = lambda im: module.apply(variables, im, method=VLM._encode)
    b, n = images.shape[:2]
    used = used_slots(modality, self.cfg.tokens_per_image, n)
    per_pass = max(1, math.ceil(per_row * b / batch_groups(b)))
    return _fill(x, modality, *encode_used(encode, images, used, per_pass))

  def head(self, x):
    """Final-normed hidden states f[B, L, E] -> logits f32[B, L, V] (llm.LLM.head)."""
    return self.llm.head(x)

  def __call__(self, batch: Mapping[str, Any], kind: str, cache: llm.Cache | None = None,
               cache_index: Any = 0, logits: bool = True):
    """Logits for a batch (training) or a chunk written into a KV cache (decoding).

    Args:
      batch: tokens, segment_ids, modality, role, turn, positions i32[B, L]; optional images
        f[B, N, H, W, 3] (needed when the chunk holds image placeholders).
      kind: mask kind, one of mma_jax.masks.KINDS.
      cache: optional llm.Cache; the chunk goes to slots cache_index .. cache_index + L - 1.
      logits: False returns the final-normed hidden states f[B, L, E] instead (for a loss that
        applies `head` chunk by chunk).
    Returns: (logits f32[B, L, V], updated Cache or None).
    """
    x = self.llm.embed(batch["tokens"])
    if batch.get("images") is not None:
      x = self.embed_images(x, batch["modality"], batch["images"])
    q_ids, k_ids = attn_lib.token_ids(batch["segment_ids"], batch["modality"], batch["role"],
                                      batch["turn"], kind, start=cache_index)
    if cache is not None:  # keys are every cache slot, this chunk's ids written in
      segment = jax.lax.dynamic_update_slice(cache.segment, k_ids.segment, (0, cache_index))
      group = jax.lax.dynamic_update_slice(cache.group, k_ids.group, (0, 0, cache_index))
      index = jnp.broadcast_to(jnp.arange(segment.shape[1]), segment.shape)
      k_ids = attn_lib.TokenIds(segment, index, group)
    out, kv = self.llm(x, batch["positions"], q_ids, k_ids, cache, cache_index, logits)
    if cache is None:
      return out, None
    return out, llm.Cache(kv[0], kv[1], k_ids.segment, k_ids.group)
