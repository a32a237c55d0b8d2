"""The mask at block granularity: the per-element predicate and which blocks can be skipped.

A kernel never sees an L x L mask. It gets the ids of each side (TokenIds) and
  - evaluates `allowed` on the ids of one (query block, key block) pair, in-kernel;
  - visits, for each query block, only the key blocks `plan` lists as live (and, for the
    dk/dv backward, only the query blocks live for each key block).

A block pair is dead when the per-block ranges of the ids prove that no pair of tokens in it is
allowed: their segment ranges do not overlap, or it lies above the diagonal (every key index
after every query index) and no group channel's ranges overlap. Packed examples are contiguous
and group ids grow with the segment, so these ranges are tight in practice.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

_MAX = jnp.iinfo(jnp.int32).max
_MIN = jnp.iinfo(jnp.int32).min


class TokenIds(NamedTuple):
  """What the mask needs to know about one side (queries or keys) of attention.

  segment: i32[B, L]    packed example id, 0 = padding / empty cache slot.
  index:   i32[B, L]    sequence slot index, the order "causal" refers to.
  group:   i32[B, G, L] group ids (queries: qgroup, keys: kgroup), -1 = none.
  """
  segment: jax.Array
  index: jax.Array
  group: jax.Array


class Plan(NamedTuple):
  """Visit lists. Row r is [count, block, block, ...]: the count live blocks in ascending
  order, then the last live block repeated (a repeated block index costs no new copy on TPU).

  kv: i32[B, nq, 1 + nk]  key blocks to visit per query block (forward, dq).
  q:  i32[B, nk, 1 + nq]  query blocks to visit per key block (dk, dv).
  """
  kv: jax.Array
  q: jax.Array


def allowed(q_segment, q_index, q_groups: Sequence, k_segment, k_index, k_groups: Sequence):
  """The mask predicate on ids already broadcast against each other (any shapes).

  q_groups / k_groups: one array per group channel. Same rule as masks.compact_mask.
  """
  ok = k_index <= q_index
  for qg, kg in zip(q_groups, k_groups):
    ok = ok | ((qg == kg) & (qg >= 0))
  return (q_segment == k_segment) & (q_segment != 0) & ok


def fields(ids: TokenIds):
  """[segment, index, group channel 0, 1, ...], each i32[B, L]: what a kernel reads."""
  return [ids.segment, ids.index] + [ids.group[:, g] for g in range(ids.group.shape[1])]


def pad(ids: TokenIds, length: int) -> TokenIds:
  """Extend ids to `length` tokens with padding (segment 0, group -1): masked everywhere."""
  extra = length - ids.segment.shape[-1]
  if extra == 0:
    return ids
  widths = lambda x: [(0, 0)] * (x.ndim - 1) + [(0, extra)]
  return TokenIds(jnp.pad(ids.segment, widths(ids.segment)),
                  jnp.pad(ids.index, widths(ids.index), constant_values=-1),
                  jnp.pad(ids.group, widths(ids.group), constant_values=-1))


def _ranges(x, valid, block: int):
  """Per-block (min, max) of x over valid entries; (MAX, MIN) for a block with none.

  x, valid: [..., L] with L a multiple of block. Returns two [..., L // block].
  """
  shape = x.shape[:-1] + (x.shape[-1] // block, block)
  x, valid = x.reshape(shape), valid.reshape(shape)
  return (jnp.min(jnp.where(valid, x, _MAX), axis=-1),
          jnp.max(jnp.where(valid, x, _MIN), axis=-1))


def _overlap(q_range, k_range):
  """[..., nq] and [..., nk] ranges -> bool[..., nq, nk]: the intervals intersect."""
  (q_lo, q_hi), (k_lo, k_hi) = q_range, k_range
  return (q_lo[..., :, None] <= k_hi[..., None, :]) & (k_lo[..., None, :] <= q_hi[..., :, None])


def live_blocks(q_ids: TokenIds, k_ids: TokenIds, block_q: int, block_k: int):
  """bool[B, nq, nk]: False only where the block pair is certainly fully masked.

  Lengths must be multiples of the block sizes (see `pad`).
  """
  q_real, k_real = q_ids.segment != 0, k_ids.segment != 0
  live = _overlap(_ranges(q_ids.segment, q_real, block_q),
                  _ranges(k_ids.segment, k_real, block_k))
  q_last = _ranges(q_ids.index, q_real, block_q)[1]
  k_first = _ranges(k_ids.index, k_real, block_k)[0]
  opened = k_first[:, None, :] <= q_last[:, :, None]  # some key at or before some query
  groups = _overlap(_ranges(q_ids.group, q_ids.group >= 0, block_q),
                    _ranges(k_ids.group, k_ids.group >= 0, block_k))  # [B, G, nq, nk]
  return live & (opened | jnp.any(groups, axis=1))


def visit_lists(live):
  """bool[B, n, m] -> i32[B, n, 1 + m]: per row the count, then the live column indices."""
  m = live.shape[-1]
  count = jnp.sum(live, axis=-1, dtype=jnp.int32)
  order = jnp.argsort(~live, axis=-1, stable=True).astype(jnp.int32)  # live columns first
  last = jnp.take_along_axis(order, jnp.maximum(count - 1, 0)[..., None], axis=-1)
  order = jnp.where(jnp.arange(m) < count[..., None], order, last)
  return jnp.concatenate([count[..., None], order], axis=-1)


def plan(q_ids: TokenIds, k_ids: TokenIds, block_q: int, block_k: int) -> Plan:
  """Visit lists for padded ids (lengths multiples of the block sizes)."""
  live = live_blocks(q_ids, k_ids, block_q, block_k)
  return Plan(visit_lists(live), visit_lists(jnp.swapaxes(live, 1, 2)))


def plans(q_ids: TokenIds, k_ids: TokenIds, lq_padded: int, lk_padded: int,
          blocks) -> dict[str, Plan]:
  """One Plan per distinct (block_q, block_k) of `blocks`, keyed by `key`.

  What a kernel's `prepare` returns: the model builds it once per call (attention.prepare)
  and every layer's kernel call looks its plans up (`lookup`) instead of sorting again.
  Args: ids over Lq / Lk tokens; the lengths the kernel pads them to (multiples of blocks).
  """
  q_ids, k_ids = pad(q_ids, lq_padded), pad(k_ids, lk_padded)
  return {key(bq, bk): plan(q_ids, k_ids, bq, bk) for bq, bk in sorted(set(blocks))}


def key(block_q: int, block_k: int) -> str:
  return f"{block_q}x{block_k}"


def lookup(prepared: dict[str, Plan], block_q: int, block_k: int) -> Plan:
  """The plan for these block sizes from a `plans` dict; a clear error when absent."""
  try:
    return prepared[key(block_q, block_k)]
  except KeyError:
    raise ValueError(
        f"No attention plan for {key(block_q, block_k)} blocks (prepared: {sorted(prepared)}): "
        "prepare with the same kernel options as the attention call.") from None


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def pad_length(x, length: int, axis: int = 1):
  """Zero-pad x along `axis` to `length`."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths)
