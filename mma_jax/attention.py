"""Dot-product attention that takes the compact mask form, never an L x L array from outside.

The XLA path here builds the mask per call from the ids (fine for CPU, tests and short
sequences); faster blockwise kernels plug in behind the same signature.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mma_jax import masks


class TokenIds(NamedTuple):
  """What the mask needs to know about one side (queries or keys) of attention.

  segment: i32[B, L]    packed example id, 0 = padding / empty cache slot.
  index:   i32[B, L]    sequence slot index, the order "causal" refers to.
  group:   i32[B, G, L] group ids (queries: qgroup, keys: kgroup), -1 = none.
  """
  segment: jax.Array
  index: jax.Array
  group: jax.Array


def token_ids(segment_ids, modality, role, turn, kind: str, start=0):
  """Query-side and key-side TokenIds for a chunk of tokens starting at slot `start`.

  Args: the four vectors i32[B, L]; kind; start: scalar slot index of the first token.
  Returns: (q_ids, k_ids).
  """
  qgroup, kgroup = masks.group_ids(segment_ids, modality, role, turn, kind)
  index = start + jnp.broadcast_to(jnp.arange(segment_ids.shape[1]), segment_ids.shape)
  return TokenIds(segment_ids, index, qgroup), TokenIds(segment_ids, index, kgroup)


def dot_product_attention(q, k, v, mask=None):
  """Softmax attention with grouped-query heads.

  Args:
    q: f[B, Lq, H, D]; k, v: f[B, Lk, K, D] with H a multiple of K.
    mask: optional bool[B, Lq, Lk]. Rows with no allowed key return zeros (finite).
  Returns: f[B, Lq, H, D] in q's dtype.
  """
  b, lq, h, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, lq, kv_heads, h // kv_heads, d)
  logits = jnp.einsum("bqkrd,bskd->bkrqs", q, k, preferred_element_type=jnp.float32)
  logits = logits * (d ** -0.5)
  if mask is not None:
    big_neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(mask[:, None, None], logits, big_neg)
  probs = jax.nn.softmax(logits, axis=-1)
  if mask is not None:  # a fully masked row would otherwise average all values
    probs = probs * jnp.any(mask, axis=-1)[:, None, None, :, None]
  out = jnp.einsum("bkrqs,bskd->bqkrd", probs.astype(v.dtype), v)
  return out.reshape(b, lq, h, d)


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, implementation: str = "xla"):
  """Masked attention from the compact ids.

  Args: q f[B, Lq, H, D]; k, v f[B, Lk, K, D]; q_ids / k_ids over Lq / Lk tokens.
  Returns: f[B, Lq, H, D].
  """
  if implementation != "xla":
    raise ValueError(f"Unknown attention implementation {implementation!r}; expected 'xla'.")
  mask = masks.compact_mask(q_ids.segment, q_ids.index, q_ids.group,
                            k_ids.segment, k_ids.index, k_ids.group)
  return dot_product_attention(q, k, v, mask)
