"""Splash-style flash attention for TPU in Pallas (Mosaic), forward and backward, mask from ids.

A fork of the Splash attention design (jax.experimental.pallas.ops.tpu.splash_attention) that
reads the ids instead of a mask: the grid's last axis walks the visit list of block_mask.plan,
prefetched into SMEM, so the index maps fetch only live key blocks (a repeated block index
costs no copy) and the kernel body runs only for them; each block's mask is computed in-kernel
from the segment / index / group ids. No L x L array exists, and the lists are built once per
call from per-block id ranges (O(L + nq * nk)).

Each kernel runs once per example (a loop over the batch), so SMEM holds one example's visit
lists whatever the batch; q, k, v and dout are read in place, the batch index prefetched too.

Layouts follow Splash: heads before the sequence ([B, H, L, D]); query-side ids replicated
across 128 lanes ([L, 128]) and key-side ids across 8 sublanes ([8, L]) for the [bq, bk]
logits; the dk/dv kernel works on transposed [bk, bq] logits, so there the roles swap. The
logsumexp is kept compact, f32[B, H, 1, L]. On a TPU tiles must be multiples of 128;
interpret=True (CPU) takes any power of two.
"""
from __future__ import annotations

import dataclasses
import functools
import math

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
MIB = 1 << 20
# Scoped VMEM is never set below this (XLA's default is 16 or 32 MiB by chip), so a low
# estimate cannot leave a kernel less than it had before.
MIN_VMEM_LIMIT = 32 * MIB


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


def _geometry(lq: int, lk: int, d: int, block_sizes: BlockSizes | None, interpret: bool):
  """Tiles fitted to the lengths and the padded lengths: (blocks, lq_p, lk_p)."""
  blocks = (block_sizes or default_blocks(d)).fit(lq, lk, minimum=1 if interpret else LANES)
  return (blocks, *blocks.padded(lq, lk))


def prepare(q_ids: TokenIds, k_ids: TokenIds, head_dim: int,
            block_sizes: BlockSizes | None = None, interpret: bool | None = None):
  """The visit lists `attention` with the same options needs (block_mask.plans)."""
  return flash.prepare(_geometry, q_ids, k_ids, head_dim, block_sizes, interpret)


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, block_sizes: BlockSizes | None = None,
              interpret: bool | None = None, *, prepared=None):
  """Masked attention from the compact ids.

  Args: q f[B, Lq, H, D]; k, v f[B, Lk, K, D] (H a multiple of K); ids over Lq / Lk tokens;
    block_sizes (None: default_blocks(D)); interpret (None: True when the default backend is
    the CPU); prepared: `prepare`'s result for these ids and options (None: built here).
  Returns: f[B, Lq, H, D]; rows that may attend nothing are zero.
  """
  d = q.shape[-1]
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  lq, lk = q.shape[1], k.shape[1]
  blocks, lq_p, lk_p = _geometry(lq, lk, d, block_sizes, interpret)
  if prepared is None:
    prepared = prepare(q_ids, k_ids, d, block_sizes, interpret)
  plans = (block_mask.lookup(prepared, blocks.block_q, blocks.block_k),
           block_mask.lookup(prepared, blocks.block_q_bwd, blocks.block_k_bwd))
  d_p = d if interpret else block_mask.round_up(d, LANES)
  heads_first = lambda x, length: jnp.pad(
      x, [(0, 0), (0, length - x.shape[1]), (0, 0), (0, d_p - d)]).transpose(0, 2, 1, 3)
  static = _Static(blocks, d ** -0.5, q_ids.group.shape[1], interpret)
  out = _attend(static, heads_first(q, lq_p), heads_first(k, lk_p), heads_first(v, lk_p),
                block_mask.pad(q_ids, lq_p), block_mask.pad(k_ids, lk_p), plans)
  return out.transpose(0, 2, 1, 3)[:, :lq, :, :d]


def smem_lists(lists):
  """Visit lists i32[B, n, 1 + m] -> ([B, n * (1 + m)], m) in the dtype the kernels prefetch.

  int16 when every entry fits (m < 2**15), as Splash downcasts its SMEM data: half the bytes.
  Flat (1-D), the form paged_attention prefetches its page table in.
  """
  b, n, row = lists.shape
  dtype = jnp.int16 if row - 1 <= jnp.iinfo(jnp.int16).max else jnp.int32
  return lists.reshape(b, n * row).astype(dtype), row - 1


def _entry(lists_ref, width: int, row, col):
  """Entry [row, col] of a flat visit list with rows of 1 + width, as i32."""
  return lists_ref[row * (1 + width) + col].astype(jnp.int32)


def _per_example(batch: int, one, per_example_args):
  """Stack one(b, *args[b]) over the batch: a loop, not a batch grid axis, so that each
  pallas_call scalar-prefetches one example's visit lists and SMEM (1 MiB on v4 and later,
  16 KiB before) stays bounded at any per-device batch."""
  return lax.map(lambda xs: one(*xs), (jnp.arange(batch, dtype=jnp.int32), *per_example_args))


def _columns(fields):
  """Each id field i32[L] as [L, LANES]: one token per row (the sublane side of a tile)."""
  return [jnp.broadcast_to(x[:, None], x.shape + (LANES,)) for x in fields]


def _rows(fields):
  """Each id field i32[L] as [SUBLANES, L]: one token per lane."""
  return [jnp.broadcast_to(x[None, :], (SUBLANES,) + x.shape) for x in fields]


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


def _block_bytes(shape, dtype) -> int:
  """VMEM bytes of one block: the minor two dims padded to whole (8 * packing, 128) tiles."""
  shape = [s for s in shape if isinstance(s, int)]
  *major, rows, cols = [1] * (2 - len(shape)) + shape
  itemsize = jnp.dtype(dtype).itemsize
  return (math.prod(major) * block_mask.round_up(rows, SUBLANES * 4 // itemsize) *
          block_mask.round_up(cols, LANES) * itemsize)


def vmem_limit(blocks, scratch, logits: tuple[int, int], ids: int) -> int:
  """Scoped VMEM limit (bytes) for one kernel, from its tiles.

  blocks: (block shape, dtype) of every pipelined input and output (double-buffered); scratch:
  (shape, dtype) of the scratch buffers; logits: the [rows, cols] logits tile, of which
  6 + `ids` f32 temporaries are counted (logits, probabilities, their gradients, the mask, the
  ids broadcast to the tile). With half again as headroom, at least MIN_VMEM_LIMIT, and at
  most the chip's VMEM when tracing on a TPU (compiling for another chip cannot know it).
  """
  need = (2 * sum(_block_bytes(s, t) for s, t in blocks) +
          sum(_block_bytes(s, t) for s, t in scratch) +
          (6 + ids) * _block_bytes(logits, jnp.float32))
  limit = max(MIN_VMEM_LIMIT, block_mask.round_up(need * 3 // 2, MIB))
  if pltpu.is_tpu_device():
    limit = min(limit, pltpu.get_tpu_info().vmem_capacity_bytes)
  return limit


def _call(st: _Static, name: str, kernel, grid, in_specs, out_specs, out_shape, scratch,
          logits: tuple[int, int], *args):
  """pallas_call of a kernel with two scalar-prefetched args (batch index i32[1], one
  example's visit list) and a VMEM limit sized from its tiles."""
  out_list = out_shape if isinstance(out_shape, list) else [out_shape]
  spec_list = out_specs if isinstance(out_specs, list) else [out_specs]
  blocks = ([(s.block_shape, x.dtype) for s, x in zip(in_specs, args[2:])] +
            [(s.block_shape, o.dtype) for s, o in zip(spec_list, out_list)])
  limit = vmem_limit(blocks, [(s.shape, s.dtype) for s in scratch], logits, 2 + st.groups)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=grid, in_specs=in_specs, out_specs=out_specs,
          scratch_shapes=scratch),
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=limit),
      interpret=st.interpret, name=name,
  )(*args)


def _fwd_kernel(batch_ref, lists_ref, q_ref, k_ref, v_ref, *refs, st: _Static, width: int):
  del batch_ref
  n = 2 + st.groups
  q_id_refs, k_id_refs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = _split(refs, n, 5)
  i, j = pl.program_id(1), pl.program_id(2)
  bk, d = k_ref.shape[0], acc_ref.shape[-1]

  @pl.when(j == 0)
  def _():
    m_ref[...] = jnp.full(m_ref.shape, flash.NEG, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(j < _entry(lists_ref, width, i, 0))
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
    lse = jnp.where(empty, 0.0, m_ref[...] + jnp.log(l))  # [bq, LANES], lanes equal
    lse_ref[...] = lse.T[:1, :]  # one row: the compact [1, bq] block


def _query_major_specs(st: _Static, bq: int, bk: int, d: int, heads_per_kv: int, width: int):
  """Specs of the forward and dq grids (head, query block, visit step): (q-shaped blocks of
  the whole batch, live k/v blocks of it, [query-side id columns..., live key-side id rows...]
  of one example, q-shaped blocks of one example, [1, bq] rows of one example)."""
  n = 2 + st.groups
  live = lambda i, j, ls: _entry(ls, width, i, 1 + j)
  ids = ([pl.BlockSpec((bq, LANES), lambda hh, i, j, bb, ls: (i, 0))] * n +
         [pl.BlockSpec((SUBLANES, bk), lambda hh, i, j, bb, ls: (0, live(i, j, ls)))] * n)
  return (pl.BlockSpec((None, None, bq, d), lambda hh, i, j, bb, ls: (bb[0], hh, i, 0)),
          pl.BlockSpec((None, None, bk, d), lambda hh, i, j, bb, ls: (
              bb[0], lax.div(hh, heads_per_kv), live(i, j, ls), 0)),
          ids,
          pl.BlockSpec((None, bq, d), lambda hh, i, j, bb, ls: (hh, i, 0)),
          pl.BlockSpec((None, 1, bq), lambda hh, i, j, bb, ls: (hh, 0, i)))


def _forward(st: _Static, q, k, v, q_ids, k_ids, plans):
  """q [B, H, Lq, D], k, v [B, K, Lk, D]; plans: (forward, backward) block_mask.Plan
  -> out [B, H, Lq, D], lse f32[B, H, 1, Lq]."""
  b, h, lq, d = q.shape
  bq, bk = st.blocks.block_q, st.blocks.block_k
  lists, width = smem_lists(plans[0].kv)
  q_spec, kv_spec, ids_specs, out_spec, lse_spec = _query_major_specs(
      st, bq, bk, d, h // k.shape[1], width)

  def one(bb, ls, q_fields, k_fields):
    return _call(
        st, "mma_splash_fwd", functools.partial(_fwd_kernel, st=st, width=width),
        (h, lq // bq, width), [q_spec, kv_spec, kv_spec, *ids_specs], [out_spec, lse_spec],
        [jax.ShapeDtypeStruct((h, lq, d), q.dtype),
         jax.ShapeDtypeStruct((h, 1, lq), jnp.float32)],
        [pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
         pltpu.VMEM((bq, d), jnp.float32)], (bq, bk),
        bb[None], ls, q, k, v, *_columns(q_fields), *_rows(k_fields))

  return _per_example(b, one, (lists, block_mask.fields(q_ids), block_mask.fields(k_ids)))


def _dq_kernel(batch_ref, lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
               st: _Static, width: int):
  del batch_ref
  n = 2 + st.groups
  q_id_refs, k_id_refs, (dq_ref, acc_ref) = _split(refs, n, 2)
  i, j = pl.program_id(1), pl.program_id(2)
  bk = k_ref.shape[0]

  @pl.when(j == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(j < _entry(lists_ref, width, i, 0))
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


def _dkv_kernel(batch_ref, lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
                st: _Static, width: int, heads_per_kv: int):
  del batch_ref
  n = 2 + st.groups
  k_id_refs, q_id_refs, (dk_ref, dv_ref, dk_acc, dv_acc) = _split(refs, n, 4)
  j, t = pl.program_id(1), pl.program_id(2)
  bq = q_ref.shape[0]

  @pl.when(t == 0)
  def _():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  @pl.when(lax.rem(t, width) < _entry(lists_ref, width, j, 0))
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
  q, k, v, q_ids, k_ids, plans, out, lse = res
  b, h, lq, d = q.shape
  kv_heads, lk = k.shape[1], k.shape[2]
  r = h // kv_heads
  bq, bk = st.blocks.block_q_bwd, st.blocks.block_k_bwd
  plan = plans[1]
  delta = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1)[:, :, None]
  q_fields, k_fields = block_mask.fields(q_ids), block_mask.fields(k_ids)
  n = 2 + st.groups

  lists, width = smem_lists(plan.kv)
  q_spec, kv_spec, ids_specs, out_spec, row = _query_major_specs(st, bq, bk, d, r, width)

  def dq_one(bb, ls, lse, delta, q_fields, k_fields):  # lse, delta f32[H, 1, Lq]
    return _call(
        st, "mma_splash_dq", functools.partial(_dq_kernel, st=st, width=width),
        (h, lq // bq, width), [q_spec, kv_spec, kv_spec, q_spec, row, row, *ids_specs],
        out_spec, jax.ShapeDtypeStruct((h, lq, d), q.dtype),
        [pltpu.VMEM((bq, d), jnp.float32)], (bq, bk),
        bb[None], ls, q, k, v, dout, lse, delta, *_columns(q_fields), *_rows(k_fields))

  dq = _per_example(b, dq_one, (lists, lse, delta, q_fields, k_fields))

  # dk/dv: grid axis 2 walks (query head of this kv head, live query block).
  lists, width = smem_lists(plan.q)
  head = lambda kh, t: kh * r + lax.div(t, width)
  q_at = lambda j, t, ls: _entry(ls, width, j, 1 + lax.rem(t, width))  # live query block
  q_block = pl.BlockSpec((None, None, bq, d),
                         lambda kh, j, t, bb, ls: (bb[0], head(kh, t), q_at(j, t, ls), 0))
  kv_block = pl.BlockSpec((None, None, bk, d), lambda kh, j, t, bb, ls: (bb[0], kh, j, 0))
  row = pl.BlockSpec((None, SUBLANES, bq),
                     lambda kh, j, t, bb, ls: (head(kh, t), 0, q_at(j, t, ls)))
  out_block = pl.BlockSpec((None, bk, d), lambda kh, j, t, bb, ls: (kh, j, 0))
  sublane_rows = lambda x: jnp.broadcast_to(x, (h, SUBLANES, lq))  # [H, 1, Lq], one example

  def dkv_one(bb, ls, lse, delta, q_fields, k_fields):
    return _call(
        st, "mma_splash_dkv",
        functools.partial(_dkv_kernel, st=st, width=width, heads_per_kv=r),
        (kv_heads, lk // bk, r * width),
        [q_block, kv_block, kv_block, q_block, row, row,
         *[pl.BlockSpec((bk, LANES), lambda kh, j, t, bb, ls: (j, 0))] * n,
         *[pl.BlockSpec((SUBLANES, bq), lambda kh, j, t, bb, ls: (0, q_at(j, t, ls)))] * n],
        [out_block] * 2,
        [jax.ShapeDtypeStruct((kv_heads, lk, d), k.dtype),
         jax.ShapeDtypeStruct((kv_heads, lk, d), v.dtype)],
        [pltpu.VMEM((bk, d), jnp.float32)] * 2, (bk, bq),
        bb[None], ls, q, k, v, dout, sublane_rows(lse), sublane_rows(delta),
        *_columns(k_fields), *_rows(q_fields))

  dk, dv = _per_example(b, dkv_one, (lists, lse, delta, q_fields, k_fields))
  return dq, dk, dv, None, None, None


_attend = flash.custom_vjp(_forward, _backward)
