"""Attention masks from per-token id vectors: causal, MMA and prefix-LM.

Every token carries four int vectors, shape [B, L] (segment_ids, modality, role, turn: the
contract in mma_jax.tokens).

Query i may attend key j only inside its own example, and then if j <= i (causal), or if a
kind-specific "group match" opens an extra rectangle:

  mma:    i is a media token, j is prompt text (any other modality) of the same turn. For one
          image followed by a question this is the paper's M': image rows also see the question.
  prefix: i and j are both prompt tokens of the same turn (PaliGemma prefix-LM).
  mma_conversation: as mma, but j may be prompt text of any turn of the example: an image
          also sees the questions of later turns. Decoding cannot do this with a KV cache (the
          image's keys are computed before a later question exists), so a model trained so
          learns from context it never has at inference: an upper bound for studying how MMA
          groups tokens across turns, reported as such. In one-turn examples it equals mma.

Two forms of the same mask:
  dense_mask(...) -> bool[B, L, L]                the reference, straight from the definition.
  group_ids(...)  -> (qgroup, kgroup) i32[B, G, L] the compact form a kernel uses:
      allowed(i, j) = seg[i] == seg[j] != 0 and (j <= i or any_g qgroup[g, i] == kgroup[g, j] >= 0)
"""
from __future__ import annotations

import jax.numpy as jnp

from mma_jax.tokens import KINDS, PROMPT, TEXT

# Group ids encode (segment, turn); a turn index must stay below this stride.
TURN_STRIDE = 1024


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown mask kind {kind!r}; expected one of {KINDS}.")


def dense_mask(segment_ids, modality, role, turn, kind: str):
  """The reference mask, read directly off the definition above.

  Args: the four per-token vectors, i32[B, L]; kind in KINDS.
  Returns: bool[B, L, L], [b, i, j] True where query i may attend key j.
  """
  _check_kind(kind)
  q = lambda x: x[:, :, None]  # query axis i
  k = lambda x: x[:, None, :]  # key axis j
  length = segment_ids.shape[-1]
  same_example = (q(segment_ids) == k(segment_ids)) & (q(segment_ids) != 0)
  causal = jnp.tril(jnp.ones((length, length), bool))[None]
  same_turn_prompt = (q(role) == PROMPT) & (k(role) == PROMPT) & (q(turn) == k(turn))
  if kind == "causal":
    extra = jnp.zeros_like(same_example)
  elif kind == "mma":  # media rows see the other-modality prompt of their turn
    extra = same_turn_prompt & (q(modality) != TEXT) & (k(modality) != q(modality))
  elif kind == "mma_conversation":  # ... of every turn
    extra = ((q(role) == PROMPT) & (k(role) == PROMPT) & (q(modality) != TEXT)
             & (k(modality) != q(modality)))
  else:  # prefix: the whole prompt of a turn is bidirectional
    extra = same_turn_prompt
  return same_example & (causal | extra)


def num_groups(kind: str, num_modalities: int = 2) -> int:
  """G, the number of group channels group_ids returns for this kind."""
  _check_kind(kind)
  return num_modalities - 1 if kind in ("mma", "mma_conversation") else 1


def group_ids(segment_ids, modality, role, turn, kind: str, num_modalities: int = 2):
  """Compact form: per-token query-side and key-side group ids.

  One group channel per non-text modality m (mma), or one channel (causal, prefix).
  Channel m: queries of modality m, keys of any other modality, both prompt tokens; the id is
  unique per (segment, turn) (mma_conversation: per segment), -1 where the token takes no part.

  Args: the four vectors i32[B, L]; kind; num_modalities counts text as well (2 = text+image).
  Returns: (qgroup, kgroup), each i32[B, G, L].
  """
  _check_kind(kind)
  span = segment_ids * TURN_STRIDE + turn  # unique per (segment, turn) within a row
  prompt = (role == PROMPT) & (segment_ids != 0)
  none = jnp.full_like(segment_ids, -1)
  if kind == "causal":
    qs, ks = [none], [none]
  elif kind == "prefix":
    qs = ks = [jnp.where(prompt, span, -1)]
  else:
    if kind == "mma_conversation":  # one group per example: every turn's prompt
      span = segment_ids * TURN_STRIDE
    mods = range(1, num_modalities)
    qs = [jnp.where(prompt & (modality == m), span, -1) for m in mods]
    ks = [jnp.where(prompt & (modality != m), span, -1) for m in mods]
  return jnp.stack(qs, axis=1), jnp.stack(ks, axis=1)


def compact_mask(q_segment, q_index, qgroup, k_segment, k_index, kgroup):
  """Dense mask from the compact form; a kernel evaluates the same predicate per block.

  Args:
    q_segment, q_index: i32[B, Lq] query segment ids and sequence (slot) indices.
    qgroup: i32[B, G, Lq].
    k_segment, k_index: i32[B, Lk]; kgroup: i32[B, G, Lk].
  Returns: bool[B, Lq, Lk].
  """
  same_example = (q_segment[:, :, None] == k_segment[:, None, :]) & (q_segment[:, :, None] != 0)
  causal = k_index[:, None, :] <= q_index[:, :, None]
  match = (qgroup[:, :, :, None] == kgroup[:, :, None, :]) & (qgroup[:, :, :, None] >= 0)
  return same_example & (causal | jnp.any(match, axis=1))
