"""MMA on tokamax's Mosaic GPU flash attention (Hopper / Blackwell), through one key order.

tokamax (openxla/tokamax, optional: `pip install 'mma-jax[tokamax]'`, Python >= 3.12) takes a
per-query key range [k_start, k_end) and applies it in-kernel, skipping key blocks outside it
in the forward pass. Our masks are not ranges in the natural order (an image row sees the keys
up to itself and, past the later images, its question), but they are after one permutation
per packed example (`interval_layout`): its media tokens first, latest first, then its text in
order. Then, for every kind:

  media row i   allowed = media at or before i   (a suffix of the media block, from i's slot)
                        + text up to e(i)         (a prefix of the text block)
  text row i    allowed = media at or before i + text up to e(i)

where e(i) is i, or the last key of i's group when that is later (the question of an image's
turn under `mma`; the turn's prompt under `prefix`). Media block and text block are adjacent,
so each row is one range. Queries and keys are gathered into that order, attended, and the
outputs scattered back. Padding rows attend to themselves and are zeroed afterwards (an empty
range would be 0 / 0 in the kernel).

tokamax's backward bounds its loops causally only, and MMA is causal under no order: it visits
every tile (the forward skips). Only self-attention over whole packed rows with one group
channel (text + one other modality) is expressible; decode steps (a query chunk against a
KV cache) run the fallback (blockwise, in attention.py). Whether the ranges are exactly the
mask is checked per call by counting each row's allowed keys: where not (mma_conversation
across turns), the fallback runs instead (lax.cond: only one branch executes).

The kernel is reached through the installed tokamax's own registry (`op`: key "mosaic_gpu" in
0.0.17; a version without it is a clear error naming it). Its "xla" implementation takes the
same Mask(k_start, k_end) and runs on the CPU: the tests run this whole path through it.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mma_jax.kernels.block_mask import TokenIds

INSTALL_HINT = ("tokamax is not installed: `pip install 'mma-jax[tokamax]'` (Python >= 3.12, "
                "jax >= 0.11), or choose another config.model.llm.attention.")


def installed() -> bool:
  return importlib.util.find_spec("tokamax") is not None


class Layout(NamedTuple):
  """A key order in which every query row's allowed keys are one range (`interval_layout`).

  perm:    i32[B, L]  perm[b, p] = the token at slot p of the new order.
  slot:    i32[B, L]  its inverse: the slot of token t in the new order.
  k_start, k_end: i32[B, L]  when exact, row p of the permuted mask allows exactly the keys
           k_start[b, p] <= r < k_end[b, p].
  exact:   bool[]     False for a layout or kind whose rows are not ranges in this order
           (mma_conversation across turns: the answers between the questions are not open
           to the image), found by counting each row's allowed keys.
  """
  perm: jax.Array
  slot: jax.Array
  k_start: jax.Array
  k_end: jax.Array
  exact: jax.Array


def interval_layout(q_ids: TokenIds, k_ids: TokenIds) -> Layout:
  """The key order in which every query row's allowed keys are one range (see Layout).

  Args: ids of the same tokens on both sides (self-attention over packed rows, one group
    channel); segments contiguous, as packing makes them.
  """
  if q_ids.group.shape[1] != 1:
    raise NotImplementedError(
        f"tokamax attention takes one group channel (text + one other modality); got "
        f"{q_ids.group.shape[1]}. Use config.model.llm.attention='blockwise' or a Pallas kernel.")
  seg, qgroup, kgroup = q_ids.segment, q_ids.group[:, 0], k_ids.group[:, 0]
  b, length = seg.shape
  pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  media = (qgroup >= 0) & (kgroup < 0)  # mma's image tokens: they see, nobody opens to them

  # Each token's run (its packed example, or a stretch of padding): first and last slot.
  first = jnp.concatenate([jnp.ones((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  last = jnp.concatenate([seg[:, 1:] != seg[:, :-1], jnp.ones((b, 1), bool)], axis=1)
  start = jax.lax.cummax(jnp.where(first, pos, 0), axis=1)
  end = jax.lax.cummin(jnp.where(last, pos, length - 1), axis=1, reverse=True)

  # Media up to a slot, counted inside the run.
  cm = jnp.cumsum(media, axis=1, dtype=jnp.int32)
  at = lambda x, i: jnp.take_along_axis(x, i, axis=1)
  before_run = at(cm, start) - at(media.astype(jnp.int32), start)
  media_upto = lambda i: at(cm, i) - before_run
  text_upto = lambda i: i - start + 1 - media_upto(i)
  n_media = media_upto(end)

  # e(i): the last key of i's group when later than i. Keys sorted by (group, slot): the last
  # entry whose group is <= g holds group g's last slot, if g has keys at all.
  sorted_group, sorted_pos = jax.lax.sort((kgroup, pos), dimension=1, num_keys=2)
  found = jax.vmap(lambda s, g: jnp.searchsorted(s, g, side="right") - 1)(sorted_group, qgroup)
  found = jnp.maximum(found, 0)
  in_group = (qgroup >= 0) & (at(sorted_group, found) == qgroup)
  group_end = jnp.where(in_group, at(sorted_pos, found), -1)
  e = jnp.maximum(pos, group_end)

  # Allowed keys per row: the run up to i, plus its group's keys after i (group ids never
  # cross examples). Sorted by (group rank, slot), the keys of group g after i are those
  # between (g, i) and g's last entry.
  rank = jnp.cumsum(jnp.concatenate(
      [jnp.zeros((b, 1), jnp.int32), (sorted_group[:, 1:] != sorted_group[:, :-1]).astype(
          jnp.int32)], axis=1), axis=1)
  sorted_key = rank * (length + 1) + sorted_pos  # < (L + 1) ** 2: int32 up to L = 46340
  query_key = at(rank, found) * (length + 1) + pos
  up_to_i = jax.vmap(lambda s, q: jnp.searchsorted(s, q, side="right"))(sorted_key, query_key)
  after = jnp.where(in_group, found + 1 - up_to_i, 0)
  allowed = pos - start + 1 + after

  k_start = start + n_media - media_upto(pos)
  k_end = start + n_media + text_upto(e)
  within = jnp.where(media, length - 1 - pos, length + pos)  # media first, latest first
  _, _, perm = jax.lax.sort((start, within, pos), dimension=1, num_keys=2)
  # Slots of the new order: a padding row attends to itself (then zeroed by the caller).
  slot = jnp.argsort(perm, axis=1).astype(jnp.int32)
  padding = seg == 0
  exact = jnp.all(padding | (k_end - k_start == allowed))
  k_start = jnp.where(padding, slot, k_start)
  k_end = jnp.where(padding, slot + 1, k_end)
  return Layout(perm, slot, at(k_start, perm), at(k_end, perm), exact)


def range_mask(k_start, k_end, length: int):
  """bool[B, L, L] of per-row key ranges: what the kernel applies (for tests)."""
  r = jnp.arange(length)
  return (r >= k_start[..., None]) & (r < k_end[..., None])


# tokamax's registry key for its Mosaic GPU flash attention (0.0.17: api.IMPLEMENTATIONS; the
# public dot_product_attention's "mosaic" is an alias it resolves per device, not a key).
MOSAIC_GPU = "mosaic_gpu"


def version() -> str:
  try:
    return importlib.metadata.version("tokamax")
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def op(name: str = MOSAIC_GPU):
  """tokamax's attention op `name` (a registry key: "mosaic_gpu", or "xla" for its CPU path),
  reached through the installed version's registry, else its op class.

  Raises: ImportError without tokamax; LookupError naming the installed version and its keys
    when neither route has `name`.
  """
  if not installed():
    raise ImportError(INSTALL_HINT)
  # pylint: disable-next=g-import-not-at-top (optional dependency, Python >= 3.12 only)
  from tokamax._src.ops.attention import api
  registry = getattr(api, "IMPLEMENTATIONS", None) or {}
  if name in registry:
    return registry[name]
  if name == MOSAIC_GPU:  # a version that ships the op class without registering it
    try:
      # pylint: disable-next=g-import-not-at-top
      from tokamax._src.ops.attention import pallas_mosaic_gpu
      return pallas_mosaic_gpu.PallasMosaicGpuFlashAttention()
    except (ImportError, AttributeError):
      pass
  raise LookupError(
      f"tokamax {version()} has no attention implementation {name!r} (its registry "
      f"tokamax._src.ops.attention.api.IMPLEMENTATIONS has {sorted(registry)}). mma_jax is "
      "tested with tokamax 0.0.17; install that (`pip install tokamax==0.0.17`) or choose "
      "config.model.llm.attention='pallas_gpu' or 'blockwise'.")


def tokamax_kernel(q, k, v, k_start, k_end, scale: float, implementation: str = MOSAIC_GPU):
  """tokamax's flash attention `implementation` with per-row key ranges.

  Args: q f[B, L, H, D]; k, v f[B, L, K, D]; k_start, k_end i32[B, L]; scale: logits scale.
  Returns: f[B, L, H, D].
  """
  kernel = op(implementation)  # first: without tokamax, the error that says how to install it
  # pylint: disable-next=g-import-not-at-top (optional dependency, Python >= 3.12 only)
  from tokamax._src.ops.attention import base
  mask = base.Mask(k_start=k_start[:, None, :], k_end=k_end[:, None, :])  # [B, heads 1, L]
  return kernel(q, k, v, mask=mask, logits_scale=scale)


def prepare(q_ids: TokenIds, k_ids: TokenIds, head_dim: int | None = None, fallback=None):
  """What `attention` needs, built once per model call: {"layout": interval_layout} for
  self-attention over whole rows, and {"fallback": fallback(q_ids, k_ids, head_dim)}, the
  fallback implementation's own preparation, when one is given."""
  prepared = {}
  if q_ids.segment.shape[1] == k_ids.segment.shape[1]:
    prepared["layout"] = interval_layout(q_ids, k_ids)
  if fallback is not None:
    prepared["fallback"] = fallback(q_ids, k_ids, head_dim)
  return prepared


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, implementation: str = MOSAIC_GPU,
              fallback=None, *, prepared=None):
  """Masked self-attention from the compact ids, on tokamax's `implementation`: a registry
  key ("mosaic_gpu" on a GPU; "xla", its reference path, runs anywhere), or a function with
  tokamax_kernel's (q, k, v, k_start, k_end, scale) signature (tests without tokamax).

  Args: q f[B, L, H, D]; k, v f[B, L, K, D]; ids over the same L tokens; fallback(q, k, v,
    q_ids, k_ids, prepared=...): what runs instead when the mask is not ranges in the new
    order (only that branch runs, lax.cond), and for a decode step (a query chunk against a
    longer KV cache); None = none needed (the caller knows the layout is exact); prepared:
    `prepare`'s result for these ids (None: built here).
  Returns: f[B, L, H, D]; padding rows are zero.
  """
  if prepared is None:
    prepared = prepare(q_ids, k_ids)
  run_fallback = lambda q, k, v: fallback(q, k, v, q_ids, k_ids,
                                          prepared=prepared.get("fallback")).astype(q.dtype)
  if q.shape[1] != k.shape[1]:  # a decode step: not one packed row
    if fallback is None:
      raise ValueError("tokamax attention is self-attention over whole rows; a query chunk "
                       "against a KV cache needs a fallback implementation.")
    return run_fallback(q, k, v)
  layout = prepared["layout"]

  def ranged(q, k, v):
    gather = lambda x, order: jnp.take_along_axis(x, order[:, :, None, None], axis=1)
    kernel = (functools.partial(tokamax_kernel, implementation=implementation)
              if isinstance(implementation, str) else implementation)
    out = kernel(gather(q, layout.perm), gather(k, layout.perm), gather(v, layout.perm),
                 layout.k_start, layout.k_end, q.shape[-1] ** -0.5)
    out = gather(out, layout.slot)
    return jnp.where((q_ids.segment != 0)[:, :, None, None], out, 0).astype(q.dtype)

  if fallback is None:
    return ranged(q, k, v)
  return jax.lax.cond(layout.exact, ranged, run_fallback, q, k, v)
