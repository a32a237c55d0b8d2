"""Splash-style flash attention for TPU in Pallas (Mosaic), forward and backward, mask from ids.

A fork of the Splash attention design (jax.experimental.pallas.ops.tpu.splash_attention) that
reads the ids instead of a mask: the grid's last axis walks the visit list of block_mask.plan,
prefetched into SMEM, so the index maps fetch only live key blocks (a repeated block index
costs no copy) and the kernel body runs only for them; each block's mask is computed in-kernel
from the segment / index / group ids. No L x L array exists, and the lists are built once per
call from per-block id ranges (O(L + nq * nk)).

Layouts follow Splash: heads before the sequence ([B, H, L, D]); query-side ids replicated
across 128 lanes ([L, 128]) and key-side ids across 8 sublanes ([8, L]) for the [bq, bk]
logits; the dk/dv kernel works on transposed [bk, bq] logits, so there the roles swap.
On a TPU tiles must be multiples of 128; interpret=True (CPU) takes any power of two.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mma_jax.kernels import block_mask, flash
from mma_jax.kernels.block_mask import TokenIds
from mma_jax.kernels.flash import BlockSizes

LANES, SUBLANES = 128, 8
NT = (((1,), (1,)), ((), ()))  # a @ b.T
NN = (((1,), (0,)), ((), ()))  # a @ b


def default_blocks(head_dim: int) -> BlockSizes:
  """512 tiles (Splash's usual choice; larger ones erase most of the sparsity)."""
  del head_dim
  return BlockSizes(512, 512, 512, 512)


@dataclasses.dataclass(frozen=True)
class _Static:
  blocks: BlockSizes
  scale: float
  groups: int
  interpret: bool


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, block_sizes: BlockSizes | None = None,
              interpret: bool | None = None):
  """Masked attention from the compact ids.

  Args: q f[B, Lq, H, D]; k, v f[B, Lk, K, D] (H a multiple of K); ids over Lq / Lk tokens;
    block_sizes (None: default_blocks(D)); interpret (None: True when the default backend is
    the CPU).
  Returns: f[B, Lq, H, D]; rows that may attend nothing are zero.
  """
  d = q.shape[-1]
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  lq, lk = q.shape[1], k.shape[1]
  blocks = (block_sizes or default_blocks(d)).fit(lq, lk, minimum=1 if interpret else LANES)
  lq_p, lk_p = blocks.padded(lq, lk)
  d_p = d if interpret else block_mask.round_up(d, LANES)
  heads_first = lambda x, length: jnp.pad(
      x, [(0, 0), (0, length - x.shape[1]), (0, 0), (0, d_p - d)]).transpose(0, 2, 1, 3)
  static = _Static(blocks, d ** -0.5, q_ids.group.shape[1], interpret)
  out = _attend(static, heads_first(q, lq_p), heads_first(k, lk_p), heads_first(v, lk_p),
                block_mask.pad(q_ids, lq_p), block_mask.pad(k_ids, lk_p))
  return out.transpose(0, 2, 1, 3)[:, :lq, :, :d]


def _columns(ids: TokenIds):
  """Each id field as [B, L, LANES]: one token per row (the sublane side of a tile)."""
  return [jnp.broadcast_to(x[:, :, None], x.shape + (LANES,)) for x in block_mask.fields(ids)]


def _rows(ids: TokenIds):
  """Each id field as [B, SUBLANES, L]: one token per lane."""
  return [jnp.broadcast_to(x[:, None, :], (x.shape[0], SUBLANES, x.shape[1]))
          for x in block_mask.fields(ids)]


def _lanes(x, n: int):
  """A lane-replicated [rows, LANES] value as [rows, n]."""
  if n <= LANES:
    return x[:, :n]
  return jnp.tile(x, (1, n // LANES))


def _split(refs, n: int, tail: int):
  """-> (first n refs, next n refs, the remaining `tail` refs)."""
  return refs[:n], refs[n:2 * n], refs[2 * n:2 * n + tail]


def _col_ids(refs, n: int):
  """(segment, index, groups) from column-layout refs, as [rows, n] arrays."""
  values = [_lanes(r[...], n) for r in refs]
  return values[0], values[1], values[2:]


def _row_ids(refs):
  """(segment, index, groups) from row-layout refs, as [1, cols] arrays."""
  values = [r[:1, :] for r in refs]
  return values[0], values[1], values[2:]


def _mask(q_side, k_side):
  (qs, qi, qg), (ks, ki, kg) = q_side, k_side
  return block_mask.allowed(qs, qi, qg, ks, ki, kg)


def _dot(a, b, dims):
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _fwd_kernel(lists_ref, q_ref, k_ref, v_ref, *refs, st: _Static, width: int):
  n = 2 + st.groups
  q_id_refs, k_id_refs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = _split(refs, n, 5)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  bk, d = k_ref.shape[0], acc_ref.shape[-1]

  @pl.when(j == 0)
  def _():
    m_ref[...] = jnp.full(m_ref.shape, flash.NEG, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(j < lists_ref[b, i, 0])
  def _():
    mask = _mask(_col_ids(q_id_refs, bk), _row_ids(k_id_refs))
    s = _dot(q_ref[...], k_ref[...], NT) * st.scale
    m_prev = m_ref[...]
    m_next = jnp.maximum(m_prev, jnp.max(jnp.where(mask, s, flash.NEG), axis=-1, keepdims=True))
    p = jnp.where(mask, jnp.exp(s - _lanes(m_next, bk)), 0.0)
    alpha = jnp.exp(m_prev - m_next)
    m_ref[...] = m_next
    l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=-1, keepdims=True)
    v = v_ref[...]
    acc_ref[...] = _lanes(alpha, d) * acc_ref[...] + _dot(p.astype(v.dtype), v, NN)

  @pl.when(j == width - 1)
  def _():
    l = l_ref[...]
    empty = l == 0.0
    l = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc_ref[...] * _lanes(1.0 / l, d)).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m_ref[...] + jnp.log(l))


def _query_major_specs(st: _Static, bq: int, bk: int, d: int, heads_per_kv: int):
  """Specs of the forward and dq grids (b, head, query block, visit step): (q-shaped blocks,
  live k/v blocks, [query-side id columns..., live key-side id rows...])."""
  n = 2 + st.groups
  live = lambda bb, i, j, ls: ls[bb, i, 1 + j]
  ids = ([pl.BlockSpec((None, bq, LANES), lambda bb, hh, i, j, ls: (bb, i, 0))] * n +
         [pl.BlockSpec((None, SUBLANES, bk),
                       lambda bb, hh, i, j, ls: (bb, 0, live(bb, i, j, ls)))] * n)
  return (pl.BlockSpec((None, None, bq, d), lambda bb, hh, i, j, ls: (bb, hh, i, 0)),
          pl.BlockSpec((None, None, bk, d), lambda bb, hh, i, j, ls: (
              bb, lax.div(hh, heads_per_kv), live(bb, i, j, ls), 0)),
          ids)


def _forward(st: _Static, q, k, v, q_ids, k_ids):
  """q [B, H, Lq, D] -> out [B, H, Lq, D], lse f32[B, H, Lq]."""
  b, h, lq, d = q.shape
  r = h // k.shape[1]
  bq, bk = st.blocks.block_q, st.blocks.block_k
  lists = block_mask.plan(q_ids, k_ids, bq, bk).kv
  width = lists.shape[-1] - 1
  q_spec, kv_spec, ids_specs = _query_major_specs(st, bq, bk, d, r)
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, st=st, width=width),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(b, h, lq // bq, width),
          in_specs=[q_spec, kv_spec, kv_spec, *ids_specs],
          out_specs=[q_spec, pl.BlockSpec((None, None, bq, LANES), q_spec.index_map)],
          scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32),
                          pltpu.VMEM((bq, LANES), jnp.float32),
                          pltpu.VMEM((bq, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lq, LANES), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=st.interpret, name="mma_splash_fwd",
  )(lists, q, k, v, *_columns(q_ids), *_rows(k_ids))
  return out, lse[..., 0]


def _dq_kernel(lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static,
               width: int):
  n = 2 + st.groups
  q_id_refs, k_id_refs, (dq_ref, acc_ref) = _split(refs, n, 2)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  bk = k_ref.shape[0]

  @pl.when(j == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(j < lists_ref[b, i, 0])
  def _():
    k, v = k_ref[...], v_ref[...]
    mask = _mask(_col_ids(q_id_refs, bk), _row_ids(k_id_refs))
    s = _dot(q_ref[...], k, NT) * st.scale
    p = jnp.where(mask, jnp.exp(s - lse_ref[0][:, None]), 0.0)
    dp = _dot(do_ref[...], v, NT)
    ds = p * (dp - delta_ref[0][:, None]) * st.scale
    acc_ref[...] += _dot(ds.astype(k.dtype), k, NN)

  @pl.when(j == width - 1)
  def _():
    dq_ref[...] = acc_ref[...].astype(dq_ref.dtype)


def _dkv_kernel(lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static,
                width: int, heads_per_kv: int):
  n = 2 + st.groups
  k_id_refs, q_id_refs, (dk_ref, dv_ref, dk_acc, dv_acc) = _split(refs, n, 4)
  b, j, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  bq = q_ref.shape[0]

  @pl.when(t == 0)
  def _():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  @pl.when(lax.rem(t, width) < lists_ref[b, j, 0])
  def _():  # transposed: logits [bk, bq]
    q, do, k, v = q_ref[...], do_ref[...], k_ref[...], v_ref[...]
    mask = _mask(_row_ids(q_id_refs), _col_ids(k_id_refs, bq))
    s = _dot(k, q, NT) * st.scale
    p = jnp.where(mask, jnp.exp(s - lse_ref[:1, :]), 0.0)
    dv_acc[...] += _dot(p.astype(do.dtype), do, NN)
    ds = p * (_dot(v, do, NT) - delta_ref[:1, :]) * st.scale
    dk_acc[...] += _dot(ds.astype(q.dtype), q, NN)

  @pl.when(t == heads_per_kv * width - 1)
  def _():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _backward(st: _Static, res, dout):
  q, k, v, q_ids, k_ids, out, lse = res
  b, h, lq, d = q.shape
  kv_heads, lk = k.shape[1], k.shape[2]
  r = h // kv_heads
  bq, bk = st.blocks.block_q_bwd, st.blocks.block_k_bwd
  plan = block_mask.plan(q_ids, k_ids, bq, bk)
  delta = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1)  # [B, H, Lq]
  n = 2 + st.groups
  params = lambda: pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))

  width = plan.kv.shape[-1] - 1
  q_spec, kv_spec, ids_specs = _query_major_specs(st, bq, bk, d, r)
  row = pl.BlockSpec((None, None, 1, bq), lambda bb, hh, i, j, ls: (bb, hh, 0, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, st=st, width=width),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(b, h, lq // bq, width),
          in_specs=[q_spec, kv_spec, kv_spec, q_spec, row, row, *ids_specs],
          out_specs=q_spec,
          scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params(), interpret=st.interpret, name="mma_splash_dq",
  )(plan.kv, q, k, v, dout, lse[:, :, None], delta[:, :, None], *_columns(q_ids),
    *_rows(k_ids))

  # dk/dv: grid axis 3 walks (query head of this kv head, live query block).
  width = plan.q.shape[-1] - 1
  head = lambda kh, t: kh * r + lax.div(t, width)
  q_at = lambda bb, j, t, ls: ls[bb, j, 1 + lax.rem(t, width)]  # live query block
  q_block = lambda bb, kh, j, t, ls: (bb, head(kh, t), q_at(bb, j, t, ls), 0)
  kv_block = lambda bb, kh, j, t, ls: (bb, kh, j, 0)
  row = pl.BlockSpec((None, None, SUBLANES, bq),
                     lambda bb, kh, j, t, ls: (bb, head(kh, t), 0, q_at(bb, j, t, ls)))
  sublane_rows = lambda x: jnp.broadcast_to(x[:, :, None], (b, h, SUBLANES, lq))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, st=st, width=width, heads_per_kv=r),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(b, kv_heads, lk // bk, r * width),
          in_specs=[pl.BlockSpec((None, None, bq, d), q_block),
                    pl.BlockSpec((None, None, bk, d), kv_block),
                    pl.BlockSpec((None, None, bk, d), kv_block),
                    pl.BlockSpec((None, None, bq, d), q_block), row, row,
                    *[pl.BlockSpec((None, bk, LANES), lambda bb, kh, j, t, ls: (bb, j, 0))] * n,
                    *[pl.BlockSpec((None, SUBLANES, bq),
                                   lambda bb, kh, j, t, ls: (bb, 0, q_at(bb, j, t, ls)))] * n],
          out_specs=[pl.BlockSpec((None, None, bk, d), kv_block)] * 2,
          scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32)] * 2),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params(), interpret=st.interpret, name="mma_splash_dkv",
  )(plan.q, q, k, v, dout, sublane_rows(lse), sublane_rows(delta), *_columns(k_ids),
    *_rows(q_ids))
  return dq, dk, dv, None, None


_attend = flash.custom_vjp(_forward, _backward)
