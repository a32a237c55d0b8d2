"""Flash attention for Hopper in Pallas Mosaic GPU, forward and backward, mask from the ids.

Note (first version, 2026-12-04): correctness first. On the CPU: GPU interpret mode (outputs
and gradients vs masks.dense_mask, race detector on) and the real Mosaic GPU lowering, under jax
0.12.0.1 and 0.11.2. On one H200 (jax 0.11.2), the version of commit 1cd452f passed the device
check for every kind at L = 2048 and 8192 and took 1.41 ms for MMA fwd+bwd at 8k x 2 (72 useful
TFLOP/s; docs/performance.md); the proxy fence and drain added since (1903658) have not run on
a GPU yet. Same contract as pallas_gpu.attention
(the Triton kernel, deprecated by JAX 0.11): the live-block plan of block_mask.plan, the mask
evaluated per tile in-kernel from the segment / index / group ids, an online softmax in f32,
GQA, padding rows zero, any Lq (decode chunks against a KV cache).

Layout of the work, per CTA (all tiles wgmma-sized: 64 rows per warpgroup):
  forward, dq  one (64-query block, batch row, W query heads of one kv head); warpgroup w takes
               head w, so the K/V tiles of a visited key block are loaded once (TMA, into SMEM)
               for all W heads. Key blocks come from the plan's list through `stages` SMEM
               slots: the TMA of block j + stages overlaps the wgmmas of blocks j + 1 ...
  dk/dv        one (key block of 64 * nw rows, batch row, kv head); warpgroup w takes 64 key
               rows and the CTA loops over (query head of the kv head, live query block),
               summing the GQA heads in-kernel; Q / dO tiles are loaded once for the nw
               warpgroups.
Hopper features used: wgmma (QK^T, PV, dP, dQ, dK, dV; P and dS from registers), TMA copies
GMEM <-> SMEM with mbarriers, software pipelining over the visit list. Not yet: warp
specialisation (a producer warpgroup), ping-pong scheduling, skipping the mask on full tiles,
tuned tiles. Computed in bf16 / f16 with f32 accumulation (f32 inputs are cast to bf16);
head_dim is zero-padded to a multiple of 64.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from mma_jax.kernels import block_mask, flash
from mma_jax.kernels.block_mask import TokenIds
from mma_jax.kernels.flash import NEG, BlockSizes

ROWS = 64  # wgmma's M per warpgroup: the query tile (forward, dq) and key tile (dk/dv) rows
_WGMMA = plgpu.Layout.WGMMA
_ROW = _WGMMA.reduce(1)  # one value per tile row
_COL = _WGMMA.reduce(0)  # one value per tile column
# 128-byte swizzled SMEM tiles (64 bf16 columns), what wgmma reads fastest.
_TRANSFORMS = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def _interpret_params(interpret):
  """The one version-specific call: GPU interpret mode (jax >= 0.11) or a real lowering.

  interpret: a bool, or plgpu.InterpretGPUParams (e.g. with detect_races=True).
  """
  if not isinstance(interpret, bool):
    return interpret
  return plgpu.InterpretGPUParams() if interpret else None


def default_blocks(head_dim: int) -> BlockSizes:
  """Query tiles are 64 rows (one warpgroup). Keys: 128 forward (64 above head_dim 128, for
  SMEM); backward 128 (two dk/dv warpgroups) at head_dim 64, else 64. Untuned."""
  return BlockSizes(ROWS, 128 if head_dim <= 128 else 64, ROWS, 128 if head_dim <= 64 else 64)


@dataclasses.dataclass(frozen=True)
class _Static:
  block_k: int
  block_k_bwd: int
  heads_per_cta: int  # W: warpgroups per CTA forward and in dq
  stages: int
  scale: float
  interpret: Any


def _geometry(lq: int, lk: int, d: int, block_sizes: BlockSizes | None, interpret):
  """Checked tiles and the padded lengths: (blocks, lq_p, lk_p)."""
  blocks = block_sizes or default_blocks(d)
  if blocks.block_q != ROWS or blocks.block_q_bwd != ROWS:
    raise ValueError(f"Mosaic GPU attention: query blocks must be {ROWS} (one warpgroup), "
                     f"got {blocks}")
  for bk in (blocks.block_k, blocks.block_k_bwd):
    if bk % ROWS or not ROWS <= bk <= 256:
      raise ValueError(f"Mosaic GPU attention: key blocks must be 64, 128, 192 or 256, got {bk}")
  if interpret and block_sizes is None:
    # GPU interpret mode runs each warpgroup as a thread, and a warpgroup waiting for another
    # holds one of XLA's CPU pool threads (NPROC of them): with 2 cores, two warpgroups can
    # starve each other. One warpgroup per CTA by default there; explicit settings still run.
    blocks = dataclasses.replace(blocks, block_k_bwd=ROWS)
  return (blocks, block_mask.round_up(lq, ROWS),
          block_mask.round_up(lk, max(blocks.block_k, blocks.block_k_bwd)))


def prepare(q_ids: TokenIds, k_ids: TokenIds, head_dim: int,
            block_sizes: BlockSizes | None = None, interpret: Any = None):
  """The visit lists `attention` with the same options needs (block_mask.plans)."""
  return flash.prepare(_geometry, q_ids, k_ids, head_dim, block_sizes, interpret)


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, block_sizes: BlockSizes | None = None,
              interpret: Any = None, heads_per_cta: int | None = None,
              num_stages: int = 2, *, prepared=None):
  """Masked attention from the compact ids.

  Args: q f[B, Lq, H, D]; k, v f[B, Lk, K, D] (H a multiple of K); ids over Lq / Lk tokens;
    block_sizes: block_q and block_q_bwd must be 64, block_k / block_k_bwd multiples of 64
    up to 256 (None: default_blocks(D)); interpret: bool or plgpu.InterpretGPUParams (None:
    True when the default backend is the CPU); heads_per_cta: query heads (warpgroups) per
    CTA, dividing H // K (None: 2 when it can, else 1; 1 when interpreting); num_stages: key
    tiles in flight; prepared: `prepare`'s result for these ids and options (None: built
    here). dk/dv CTAs run block_k_bwd // 64 warpgroups.
  Returns: f[B, Lq, H, D] in q's dtype; rows that may attend nothing are zero.
  """
  b, lq, h, d = q.shape
  lk, kv_heads = k.shape[1], k.shape[2]
  if h % kv_heads:
    raise ValueError(f"{h} query heads are not a multiple of {kv_heads} kv heads")
  r = h // kv_heads
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  blocks, lq_p, lk_p = _geometry(lq, lk, d, block_sizes, interpret)
  if prepared is None:
    prepared = prepare(q_ids, k_ids, d, block_sizes, interpret)
  plans = (block_mask.lookup(prepared, ROWS, blocks.block_k),
           block_mask.lookup(prepared, ROWS, blocks.block_k_bwd))
  w = heads_per_cta or (2 if r % 2 == 0 and not interpret else 1)
  if r % w:
    raise ValueError(f"heads_per_cta={w} must divide the {r} query heads per kv head")
  dtype = q.dtype
  compute = dtype if dtype in (jnp.bfloat16, jnp.float16) else jnp.bfloat16
  d_p = block_mask.round_up(d, 64)
  pad = lambda x, length: jnp.pad(x.astype(compute), [(0, 0), (0, length - x.shape[1]), (0, 0),
                                                      (0, d_p - d)])
  st = _Static(blocks.block_k, blocks.block_k_bwd, w, num_stages, d ** -0.5,
               _interpret_params(interpret))
  q_ids, k_ids = block_mask.pad(q_ids, lq_p), block_mask.pad(k_ids, lk_p)
  out = _attend(st, pad(q, lq_p), pad(k, lk_p), pad(v, lk_p), q_ids, k_ids, plans)
  return out[:, :lq, :, :d].astype(dtype)


def _fields(ids: TokenIds):
  """i32[B, F, L]: segment, index, group channels (block_mask.fields) stacked for one TMA."""
  return jnp.stack(block_mask.fields(ids), axis=1).astype(jnp.int32)


def _mask(row_side, col_side, shape, rows_are_queries: bool = True):
  """bool[shape] from per-row ids (each [rows], _ROW layout) and per-column ids ([cols], _COL)."""
  rows = [lax.broadcast_in_dim(x, shape, [0]) for x in row_side]
  cols = [lax.broadcast_in_dim(x, shape, [1]) for x in col_side]
  q, k = (rows, cols) if rows_are_queries else (cols, rows)
  return block_mask.allowed(q[0], q[1], q[2:], k[0], k[1], k[2:])


def _rows(x, shape):
  return lax.broadcast_in_dim(x, shape, [0])


def _cols(x, shape):
  return lax.broadcast_in_dim(x, shape, [1])


def _wgmma(a, b, shape):
  """f32[shape] = a @ b (a: registers or SMEM ref, b: SMEM ref, maybe a transposed view)."""
  def run(acc):
    plgpu.wgmma(acc, a, b)
    return acc[...]
  return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def _wgmma_acc(acc, a, b, interpret):
  """acc + a @ b for an f32 accumulator held in registers.

  a: bf16 registers (a wgmma layout) or an SMEM tile; b: an SMEM tile. On the GPU wgmma
  accumulates in place (run_state over an initialised accumulator). GPU interpret mode (jax
  0.11 / 0.12) has no run_state over accumulators and reads wgmma operands only from SMEM, so
  there the same product is a dot in registers: the one place the two paths differ.
  """
  if interpret:
    if not isinstance(a, jax.Array):
      a = a[...]
    return acc + jnp.dot(a, b[...], preferred_element_type=jnp.float32)

  def run(ref):
    plgpu.wgmma(ref, a, b)
  return pl.run_state(run)(plgpu.ACC.init(acc))


def _t(ref):
  """The transposed view of a 2-D SMEM tile (wgmma reads it as K-major)."""
  return ref.transpose((1, 0))


def _zeros(shape, layout):
  return plgpu.layout_cast(jnp.zeros(shape, jnp.float32), layout)


def _kernel_call(st: _Static, body, out_type, scratch, grid, name):
  return plgpu.kernel(
      body, out_type=out_type, scratch_types=scratch,
      grid=grid[0], grid_names=grid[1], num_threads=grid[2], thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=st.interpret, kernel_name=name)


class _KeyStream:
  """Key tiles (K, V, key ids) of one visit list, streamed through `stages` SMEM slots.

  Warpgroup 0 issues the TMA copies; every warpgroup arrives on `consumed` once done with a
  slot, and warpgroup 0 waits for all of them before refilling it.
  """

  def __init__(self, lists_ref, srcs, smems, bars, consumed, size: int, stages: int, wg):
    self.lists_ref, self.srcs, self.smems, self.bars = lists_ref, srcs, smems, bars
    self.consumed, self.size, self.stages, self.wg = consumed, size, stages, wg

  def count(self):
    return self.lists_ref[0]

  def issue(self, j, slot):
    start = pl.multiple_of(self.lists_ref[1 + j] * self.size, self.size)
    for src, smem, bar in zip(self.srcs, self.smems, self.bars):
      plgpu.copy_gmem_to_smem(src(pl.ds(start, self.size)), smem.at[slot], bar.at[slot])

  def prologue(self):
    count = self.count()

    @pl.when(self.wg == 0)
    def _():
      for s in range(self.stages):
        pl.when(s < count)(functools.partial(self.issue, s, s))

  def wait(self, slot, which):
    plgpu.barrier_wait(self.bars[which].at[slot])

  def release(self, j, slot):
    _release(self.consumed.at[slot])

    @pl.when((self.wg == 0) & (j + self.stages < self.count()))
    def _():
      plgpu.barrier_wait(self.consumed.at[slot])
      self.issue(j + self.stages, slot)

  def drain(self):
    _drain(self.consumed, self.stages, self.count(), self.wg)


def _release(consumed):
  """This warpgroup is done reading a slot. The proxy fence orders its generic-proxy SMEM reads
  (key ids, rows of logsumexp) before the TMA (async proxy) that will refill the slot."""
  plgpu.commit_smem()
  plgpu.barrier_arrive(consumed)


def _drain(consumed, stages: int, steps, wg):
  """Warpgroup 0 observes the last release of each slot (the ones no refill waited for).

  Costs one wait at the end; keeps every barrier phase observed by its waiter, which GPU
  interpret mode checks when the barrier is freed (jax 0.11).
  """
  @pl.when(wg == 0)
  def _():
    for s in range(stages):
      pl.when(s < steps)(functools.partial(plgpu.barrier_wait, consumed.at[s]))


def _stream_scratch(st: _Static, size, d, dtype, nf, num_wg):
  """SMEM slots and barriers for a _KeyStream of two [size, d] tiles plus ids [nf, size]."""
  s = st.stages
  smems = [plgpu.SMEM((s, size, d), dtype, transforms=_TRANSFORMS),
           plgpu.SMEM((s, size, d), dtype, transforms=_TRANSFORMS),
           plgpu.SMEM((s, nf, size), jnp.int32)]
  bars = [plgpu.Barrier(num_barriers=s) for _ in range(3)]
  return smems, bars, plgpu.Barrier(num_arrivals=num_wg, num_barriers=s)


def _query_block(st: _Static, w: int, r: int, bk: int, lists_ref, k_ref, v_ref, kf_ref, smems,
                 bars, consumed):
  """This CTA's query block in the forward and dq kernels (grid q, b, hg; warpgroup wg takes
  query head hg * w + wg, whose kv head is (hg * w) // r) and its key stream, started.

  Returns: (batch row, warpgroup, query head, query rows slice, _KeyStream).
  """
  i, bb, hg, wg = (lax.axis_index(n) for n in ("q", "b", "hg", "wg"))
  kv_head = lax.div(hg * w, r)
  stream = _KeyStream(
      lists_ref.at[bb, i],
      [lambda ks: k_ref.at[bb, ks, kv_head], lambda ks: v_ref.at[bb, ks, kv_head],
       lambda ks: kf_ref.at[bb, :, ks]],
      smems, bars, consumed, bk, st.stages, wg)
  stream.prologue()
  return bb, wg, hg * w + wg, pl.ds(pl.multiple_of(i * ROWS, ROWS), ROWS), stream


def _forward(st: _Static, q, k, v, q_ids, k_ids, plans):
  """plans: (forward, backward) block_mask.Plan -> out f[B, Lq, H, D], lse f32[B, H, Lq]."""
  b, lq, h, d = q.shape
  r = h // k.shape[2]
  w, bk = st.heads_per_cta, st.block_k
  lists = plans[0].kv
  qf, kf = _fields(q_ids), _fields(k_ids)
  nf = qf.shape[1]

  def kernel(lists_ref, q_ref, k_ref, v_ref, qf_ref, kf_ref, o_ref, lse_ref,
             q_smem, lse_smem, q_bar, smems, bars, consumed):
    bb, wg, head, q_rows, stream = _query_block(st, w, r, bk, lists_ref, k_ref, v_ref, kf_ref,
                                                smems, bars, consumed)
    k_smem, v_smem, kf_smem = smems
    q_tile = q_smem.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[bb, q_rows, head], q_tile, q_bar.at[wg])
    q_side = [plgpu.load(qf_ref.at[bb, f, q_rows], layout=_ROW, optimized=False)
              for f in range(nf)]
    plgpu.barrier_wait(q_bar.at[wg])
    shape = (ROWS, bk)

    def body(j, carry):
      acc, m, l = carry
      slot = lax.rem(j, st.stages)
      stream.wait(slot, 0)
      stream.wait(slot, 2)
      s = _wgmma(q_tile, _t(k_smem.at[slot]), shape) * st.scale
      k_side = [plgpu.load(kf_smem.at[slot, f], layout=_COL) for f in range(nf)]
      mask = _mask(q_side, k_side, shape)
      m_new = jnp.maximum(m, jnp.where(mask, s, NEG).max(axis=1))
      p = jnp.where(mask, jnp.exp(s - _rows(m_new, shape)), 0.0)
      alpha = jnp.exp(m - m_new)
      l = alpha * l + p.sum(axis=1)
      acc = acc * _rows(alpha, acc.shape)
      stream.wait(slot, 1)
      acc = _wgmma_acc(acc, p.astype(v_smem.dtype), v_smem.at[slot], st.interpret)
      stream.release(j, slot)
      return acc, m_new, l

    carry = (_zeros((ROWS, d), _WGMMA),
             plgpu.layout_cast(jnp.full((ROWS,), NEG, jnp.float32), _ROW), _zeros((ROWS,), _ROW))
    acc, m, l = lax.fori_loop(0, stream.count(), body, carry)
    stream.drain()
    # Rows that saw no key (padding): l = 0 -> output 0 and logsumexp 0 (flash.finish).
    empty = l == 0.0
    l = jnp.where(empty, 1.0, l)
    q_tile[...] = (acc * _rows(1.0 / l, acc.shape)).astype(q_tile.dtype)
    lse_smem.at[wg][...] = jnp.where(empty, 0.0, m + jnp.log(l))
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_tile, o_ref.at[bb, q_rows, head])
    plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[bb, head, q_rows])
    plgpu.wait_smem_to_gmem(0)

  smems, bars, consumed = _stream_scratch(st, bk, d, k.dtype, nf, w)
  scratch = [plgpu.SMEM((w, ROWS, d), q.dtype, transforms=_TRANSFORMS),
             plgpu.SMEM((w, ROWS), jnp.float32), plgpu.Barrier(num_barriers=w),
             smems, bars, consumed]
  out_type = [jax.ShapeDtypeStruct(q.shape, q.dtype),
              jax.ShapeDtypeStruct((b, h, lq), jnp.float32)]
  grid = ((lq // ROWS, b, h // w), ("q", "b", "hg"), w)
  return _kernel_call(st, kernel, out_type, scratch, grid, "mma_mosaic_fwd")(
      lists, q, k, v, qf, kf)


def _backward(st: _Static, res, dout):
  q, k, v, q_ids, k_ids, plans, out, lse = res
  b, lq, h, d = q.shape
  lk, kv_heads = k.shape[1], k.shape[2]
  r = h // kv_heads
  w, bk = st.heads_per_cta, st.block_k_bwd
  plan = plans[1]
  delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), dout.astype(jnp.float32))
  qf, kf = _fields(q_ids), _fields(k_ids)
  nf = qf.shape[1]

  def dq_kernel(lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qf_ref, kf_ref,
                dq_ref, q_smem, do_smem, q_bar, smems, bars, consumed):
    bb, wg, head, q_rows, stream = _query_block(st, w, r, bk, lists_ref, k_ref, v_ref, kf_ref,
                                                smems, bars, consumed)
    k_smem, v_smem, kf_smem = smems
    q_tile, do_tile = q_smem.at[wg], do_smem.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[bb, q_rows, head], q_tile, q_bar.at[wg])
    plgpu.copy_gmem_to_smem(do_ref.at[bb, q_rows, head], do_tile, q_bar.at[wg])
    q_side = [plgpu.load(qf_ref.at[bb, f, q_rows], layout=_ROW, optimized=False)
              for f in range(nf)]
    lse = plgpu.load(lse_ref.at[bb, head, q_rows], layout=_ROW, optimized=False)
    dlt = plgpu.load(delta_ref.at[bb, head, q_rows], layout=_ROW, optimized=False)
    plgpu.barrier_wait(q_bar.at[wg])
    shape = (ROWS, bk)

    def body(j, dq):
      slot = lax.rem(j, st.stages)
      stream.wait(slot, 0)
      stream.wait(slot, 2)
      s = _wgmma(q_tile, _t(k_smem.at[slot]), shape) * st.scale
      k_side = [plgpu.load(kf_smem.at[slot, f], layout=_COL) for f in range(nf)]
      mask = _mask(q_side, k_side, shape)
      p = jnp.where(mask, jnp.exp(s - _rows(lse, shape)), 0.0)
      stream.wait(slot, 1)
      dp = _wgmma(do_tile, _t(v_smem.at[slot]), shape)
      ds = p * (dp - _rows(dlt, shape)) * st.scale
      dq = _wgmma_acc(dq, ds.astype(k_smem.dtype), k_smem.at[slot], st.interpret)
      stream.release(j, slot)
      return dq

    dq = lax.fori_loop(0, stream.count(), body, _zeros((ROWS, d), _WGMMA))
    stream.drain()
    q_tile[...] = dq.astype(q_tile.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_tile, dq_ref.at[bb, q_rows, head])
    plgpu.wait_smem_to_gmem(0)

  smems, bars, consumed = _stream_scratch(st, bk, d, k.dtype, nf, w)
  tile = plgpu.SMEM((w, ROWS, d), q.dtype, transforms=_TRANSFORMS)
  scratch = [tile, tile, plgpu.Barrier(num_arrivals=2, num_barriers=w), smems, bars, consumed]
  grid = ((lq // ROWS, b, h // w), ("q", "b", "hg"), w)
  dq = _kernel_call(st, dq_kernel, jax.ShapeDtypeStruct(q.shape, q.dtype), scratch, grid,
                    "mma_mosaic_dq")(plan.kv, q, k, v, dout, lse, delta, qf, kf)

  # dk/dv: warpgroup w owns key rows [64 w, 64 w + 64) of the CTA's key block.
  nw = bk // ROWS

  def dkv_kernel(lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qf_ref, kf_ref,
                 dk_ref, dv_ref, k_smem, v_smem, k_bar, qsmems, qbars, consumed):
    j, bb, kh, wg = (lax.axis_index(n) for n in ("k", "b", "kh", "wg"))
    k_rows = pl.ds(pl.multiple_of(j * bk + wg * ROWS, ROWS), ROWS)
    k_tile, v_tile = k_smem.at[wg], v_smem.at[wg]
    plgpu.copy_gmem_to_smem(k_ref.at[bb, k_rows, kh], k_tile, k_bar.at[wg])
    plgpu.copy_gmem_to_smem(v_ref.at[bb, k_rows, kh], v_tile, k_bar.at[wg])
    k_side = [plgpu.load(kf_ref.at[bb, f, k_rows], layout=_ROW, optimized=False)
              for f in range(nf)]
    lists = lists_ref.at[bb, j]
    count = lists[0]
    # Step t visits (query head kh * r + t // count, live query block t % count).
    steps = r * count
    head_of = lambda t: kh * r + lax.div(t, count)

    def src(ref):
      return lambda t, qs: ref.at[bb, qs, head_of(t)]

    def row_src(ref):
      return lambda t, qs: ref.at[bb, head_of(t), qs]

    srcs = [src(q_ref), src(do_ref), row_src(lse_ref), row_src(delta_ref),
            lambda t, qs: qf_ref.at[bb, :, qs]]
    q_smem, do_smem, lse_smem, delta_smem, qf_smem = qsmems

    def issue(t, slot):
      start = pl.multiple_of(lists[1 + lax.rem(t, count)] * ROWS, ROWS)
      for s, smem, bar in zip(srcs, qsmems, qbars):
        plgpu.copy_gmem_to_smem(s(t, pl.ds(start, ROWS)), smem.at[slot], bar.at[slot])

    @pl.when(wg == 0)
    def _():
      for s in range(st.stages):
        pl.when(s < steps)(functools.partial(issue, s, s))

    plgpu.barrier_wait(k_bar.at[wg])
    shape = (ROWS, ROWS)  # key rows x query columns

    def body(t, carry):
      dk, dv = carry
      slot = lax.rem(t, st.stages)
      for bar in qbars:
        plgpu.barrier_wait(bar.at[slot])
      q_tile, do_tile = q_smem.at[slot], do_smem.at[slot]
      s_t = _wgmma(k_tile, _t(q_tile), shape) * st.scale
      q_side = [plgpu.load(qf_smem.at[slot, f], layout=_COL) for f in range(nf)]
      mask = _mask(k_side, q_side, shape, rows_are_queries=False)
      lse = plgpu.load(lse_smem.at[slot], layout=_COL)
      p_t = jnp.where(mask, jnp.exp(s_t - _cols(lse, shape)), 0.0)
      dv = _wgmma_acc(dv, p_t.astype(do_tile.dtype), do_tile, st.interpret)
      dp_t = _wgmma(v_tile, _t(do_tile), shape)
      dlt = plgpu.load(delta_smem.at[slot], layout=_COL)
      ds_t = p_t * (dp_t - _cols(dlt, shape)) * st.scale
      dk = _wgmma_acc(dk, ds_t.astype(q_tile.dtype), q_tile, st.interpret)
      _release(consumed.at[slot])

      @pl.when((wg == 0) & (t + st.stages < steps))
      def _():
        plgpu.barrier_wait(consumed.at[slot])
        issue(t + st.stages, slot)

      return dk, dv

    zeros = _zeros((ROWS, d), _WGMMA)
    dk, dv = lax.fori_loop(0, steps, body, (zeros, zeros))
    _drain(consumed, st.stages, steps, wg)
    k_tile[...] = dk.astype(k_tile.dtype)
    v_tile[...] = dv.astype(v_tile.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(k_tile, dk_ref.at[bb, k_rows, kh])
    plgpu.copy_smem_to_gmem(v_tile, dv_ref.at[bb, k_rows, kh])
    plgpu.wait_smem_to_gmem(0)

  s = st.stages
  kv_tile = plgpu.SMEM((nw, ROWS, d), k.dtype, transforms=_TRANSFORMS)
  q_tiles = plgpu.SMEM((s, ROWS, d), q.dtype, transforms=_TRANSFORMS)
  rows = plgpu.SMEM((s, ROWS), jnp.float32)
  qsmems = [q_tiles, q_tiles, rows, rows, plgpu.SMEM((s, nf, ROWS), jnp.int32)]
  qbars = [plgpu.Barrier(num_barriers=s) for _ in qsmems]
  scratch = [kv_tile, kv_tile, plgpu.Barrier(num_arrivals=2, num_barriers=nw), qsmems, qbars,
             plgpu.Barrier(num_arrivals=nw, num_barriers=s)]
  grid = ((lk // bk, b, kv_heads), ("k", "b", "kh"), nw)
  dk, dv = _kernel_call(
      st, dkv_kernel, [jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2, scratch, grid,
      "mma_mosaic_dkv")(plan.q, q, k, v, dout, lse, delta, qf, kf)
  return dq, dk, dv, None, None, None


_attend = flash.custom_vjp(_forward, _backward)
