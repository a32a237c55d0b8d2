"""Flash attention for GPU in Pallas (Triton lowering), forward and backward, mask from the ids.

One program per (query block, batch row, query head) loops over the live key blocks of
block_mask.plan only, computing each block's mask in-kernel from the segment / index / group
ids (never an L x L array), with an online softmax in f32 (bf16 inputs, f32 accumulation).
The backward recomputes probabilities from the saved logsumexp: a dq kernel over the same
lists and a dk/dv kernel per (key block, batch row, kv head) over the live query blocks of
every query head sharing that kv head (GQA summed in-kernel).

Blocks must be powers of two of at least 16 on a GPU (Triton's dot); lengths are padded
internally, and head_dim is zero-padded to a power of two. interpret=True runs on CPU.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:  # JAX 0.11 deprecated Pallas's Triton backend; a later JAX removes it
  from jax.experimental.pallas import triton as plgpu
  AVAILABLE = True
except ImportError:
  plgpu = None
  AVAILABLE = False

from mma_jax.kernels import block_mask, flash
from mma_jax.kernels.block_mask import TokenIds
from mma_jax.kernels.flash import BlockSizes


# JAX 0.11+ warns at every lowering of a Triton kernel (three per layer): once per process says
# it. The message is jax's (jax/_src/pallas/triton/pallas_call_registration.py).
warnings.filterwarnings("once", message="The Pallas Triton backend is deprecated",
                        category=DeprecationWarning)

UNAVAILABLE = ("the installed JAX has no Pallas Triton backend (deprecated in JAX 0.11, since "
               "removed): choose another config.model.llm.attention, or pin jax < its removal")


def default_blocks(head_dim: int) -> BlockSizes:
  """Hopper-friendly tiles: 128 forward, 64 backward (halved for head_dim > 128)."""
  return BlockSizes(128, 128, 64, 64) if head_dim <= 128 else BlockSizes(64, 64, 32, 32)


@dataclasses.dataclass(frozen=True)
class _Static:
  blocks: BlockSizes
  scale: float
  groups: int
  interpret: bool
  num_warps: int
  num_stages: int


def _geometry(lq: int, lk: int, d: int, block_sizes: BlockSizes | None, interpret: bool):
  """Tiles fitted to the lengths and the padded lengths: (blocks, lq_p, lk_p)."""
  # Triton's dot needs tiles of at least 16.
  blocks = (block_sizes or default_blocks(d)).fit(lq, lk, minimum=1 if interpret else 16)
  return (blocks, *blocks.padded(lq, lk))


def prepare(q_ids: TokenIds, k_ids: TokenIds, head_dim: int,
            block_sizes: BlockSizes | None = None, interpret: bool | None = None):
  """The visit lists `attention` with the same options needs (block_mask.plans)."""
  return flash.prepare(_geometry, q_ids, k_ids, head_dim, block_sizes, interpret)


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, block_sizes: BlockSizes | None = None,
              interpret: bool | None = None, num_warps: int | None = None, num_stages: int = 2,
              *, prepared=None):
  """Masked attention from the compact ids.

  Args: q f[B, Lq, H, D]; k, v f[B, Lk, K, D] (H a multiple of K); ids over Lq / Lk tokens;
    block_sizes (None: default_blocks(D)); interpret (None: True when the default backend
    is the CPU); num_warps / num_stages: Triton launch settings; prepared: `prepare`'s
    result for these ids and options (None: built here).
  Returns: f[B, Lq, H, D]; rows that may attend nothing are zero.
  """
  if not AVAILABLE:
    raise NotImplementedError(UNAVAILABLE)
  d = q.shape[-1]
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  lq, lk = q.shape[1], k.shape[1]
  blocks, lq_p, lk_p = _geometry(lq, lk, d, block_sizes, interpret)
  if prepared is None:
    prepared = prepare(q_ids, k_ids, d, block_sizes, interpret)
  plans = (block_mask.lookup(prepared, blocks.block_q, blocks.block_k),
           block_mask.lookup(prepared, blocks.block_q_bwd, blocks.block_k_bwd))
  d_p = pl.next_power_of_2(d)
  pad = lambda x, length: jnp.pad(x, [(0, 0), (0, length - x.shape[1]), (0, 0),
                                      (0, d_p - d)])
  static = _Static(blocks, d ** -0.5, q_ids.group.shape[1], interpret,
                   num_warps or (4 if d_p <= 64 else 8), num_stages)
  q_ids, k_ids = block_mask.pad(q_ids, lq_p), block_mask.pad(k_ids, lk_p)
  out = _attend(static, pad(q, lq_p), pad(k, lk_p), pad(v, lk_p), q_ids, k_ids, plans)
  return out[:, :lq, :, :d]


def _ids_specs(n: int, block, index_map):
  return [pl.BlockSpec((None, block), index_map) for _ in range(n)]


def _load_ids(refs, at=...):
  """(segment, index, [groups]) of a block from id refs (see block_mask.fields)."""
  values = [r[at] for r in refs]
  return values[0], values[1], values[2:]


def _block_mask(q_side, k_side):
  """bool[bq, bk] from (segment, index, groups) of the query and key blocks."""
  (qs, qi, qg), (ks, ki, kg) = q_side, k_side
  return block_mask.allowed(qs[:, None], qi[:, None], [g[:, None] for g in qg],
                            ks[None, :], ki[None, :], [g[None, :] for g in kg])


def _dot(a, b, trans_b=False):
  """f32 product of two 2-D blocks; exact f32 for f32 inputs (no TF32)."""
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return plgpu.dot(a, b, trans_b=trans_b, precision=precision)


def _at(block_index, size):
  return pl.ds(pl.multiple_of(block_index * size, size), size)


def _fwd_kernel(lists_ref, q_ref, k_ref, v_ref, *refs, st: _Static, bk: int):
  n = 2 + st.groups
  q_id_refs, k_id_refs, (o_ref, lse_ref) = refs[:n], refs[n:2 * n], refs[2 * n:]
  q = q_ref[...]
  q_side = _load_ids(q_id_refs)

  def body(j, carry):
    m, l, acc = carry
    ks = _at(lists_ref[1 + j], bk)
    mask = _block_mask(q_side, _load_ids(k_id_refs, ks))
    s = _dot(q, k_ref[ks, :], trans_b=True) * st.scale
    m, l, alpha, p = flash.softmax_step(m, l, s, mask)
    v = v_ref[ks, :]
    return m, l, alpha[:, None] * acc + _dot(p.astype(v.dtype), v)

  carry = flash.init((q.shape[0],), q.shape[1])
  out, lse = flash.finish(*lax.fori_loop(0, lists_ref[0], body, carry))
  o_ref[...] = out.astype(o_ref.dtype)
  lse_ref[...] = lse


def _forward(st: _Static, q, k, v, q_ids, k_ids, plans):
  """plans: (forward, backward) block_mask.Plan -> out f[B, Lq, H, D], lse f32[B, H, Lq]."""
  b, lq, h, d = q.shape
  lk, r = k.shape[1], h // k.shape[2]
  bq, bk = st.blocks.block_q, st.blocks.block_k
  plan = plans[0]
  n = 2 + st.groups
  qspec = pl.BlockSpec((None, bq, None, d), lambda i, bb, hh: (bb, i, hh, 0))
  kspec = pl.BlockSpec((None, lk, None, d), lambda i, bb, hh: (bb, 0, hh // r, 0))
  return pl.pallas_call(
      functools.partial(_fwd_kernel, st=st, bk=bk),
      grid=(lq // bq, b, h),
      in_specs=[pl.BlockSpec((None, None, plan.kv.shape[-1]), lambda i, bb, hh: (bb, i, 0)),
                qspec, kspec, kspec,
                *_ids_specs(n, bq, lambda i, bb, hh: (bb, i)),
                *_ids_specs(n, lk, lambda i, bb, hh: (bb, 0))],
      out_specs=[qspec, pl.BlockSpec((None, None, bq), lambda i, bb, hh: (bb, hh, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=st.num_warps, num_stages=st.num_stages),
      interpret=st.interpret, name="mma_flash_fwd",
  )(plan.kv, q, k, v, *block_mask.fields(q_ids), *block_mask.fields(k_ids))


def _dq_kernel(lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static,
               bk: int):
  n = 2 + st.groups
  q_id_refs, k_id_refs, (dq_ref,) = refs[:n], refs[n:2 * n], refs[2 * n:]
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_side = _load_ids(q_id_refs)

  def body(j, dq):
    ks = _at(lists_ref[1 + j], bk)
    k, v = k_ref[ks, :], v_ref[ks, :]
    mask = _block_mask(q_side, _load_ids(k_id_refs, ks))
    p = flash.probs(_dot(q, k, trans_b=True) * st.scale, lse, mask)
    ds = flash.dlogits(p, _dot(do, v, trans_b=True), delta) * st.scale
    return dq + _dot(ds.astype(k.dtype), k)

  dq = lax.fori_loop(0, lists_ref[0], body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(lists_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static,
                bq: int, heads_per_kv: int):
  n = 2 + st.groups
  q_id_refs, k_id_refs, (dk_ref, dv_ref) = refs[:n], refs[n:2 * n], refs[2 * n:]
  k, v = k_ref[...], v_ref[...]
  k_side = _load_ids(k_id_refs)

  def body(t, carry):  # t runs over (query head of this kv head, live query block)
    dk, dv = carry
    hr, j = t // lists_ref[0], t % lists_ref[0]
    qs = _at(lists_ref[1 + j], bq)
    q, do = q_ref[qs, hr, :], do_ref[qs, hr, :]
    mask = _block_mask(_load_ids(q_id_refs, qs), k_side)
    p = flash.probs(_dot(q, k, trans_b=True) * st.scale, lse_ref[hr, qs], mask)
    ds = flash.dlogits(p, _dot(do, v, trans_b=True), delta_ref[hr, qs]) * st.scale
    return dk + _dot_t(ds, q), dv + _dot_t(p, do)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, heads_per_kv * lists_ref[0], body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dot_t(a, b):
  """a^T b for a f32[bq, bk] (cast to b's dtype) and b [bq, D] -> f32[bk, D]."""
  precision = lax.Precision.HIGHEST if b.dtype == jnp.float32 else None
  return plgpu.dot(a.astype(b.dtype), b, trans_a=True, precision=precision)


def _backward(st: _Static, res, dout):
  q, k, v, q_ids, k_ids, plans, out, lse = res
  b, lq, h, d = q.shape
  lk, kv_heads = k.shape[1], k.shape[2]
  r = h // kv_heads
  bq, bk = st.blocks.block_q_bwd, st.blocks.block_k_bwd
  plan = plans[1]
  delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), dout.astype(jnp.float32))
  n = 2 + st.groups
  params = plgpu.CompilerParams(num_warps=st.num_warps, num_stages=st.num_stages)
  ids = [*block_mask.fields(q_ids), *block_mask.fields(k_ids)]

  qspec = pl.BlockSpec((None, bq, None, d), lambda i, bb, hh: (bb, i, hh, 0))
  kspec = pl.BlockSpec((None, lk, None, d), lambda i, bb, hh: (bb, 0, hh // r, 0))
  rowspec = pl.BlockSpec((None, None, bq), lambda i, bb, hh: (bb, hh, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, st=st, bk=bk),
      grid=(lq // bq, b, h),
      in_specs=[pl.BlockSpec((None, None, plan.kv.shape[-1]), lambda i, bb, hh: (bb, i, 0)),
                qspec, kspec, kspec, qspec, rowspec, rowspec,
                *_ids_specs(n, bq, lambda i, bb, hh: (bb, i)),
                *_ids_specs(n, lk, lambda i, bb, hh: (bb, 0))],
      out_specs=qspec, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params, interpret=st.interpret, name="mma_flash_dq",
  )(plan.kv, q, k, v, dout, lse, delta, *ids)

  # dk/dv: queries seen per kv head as [Lq, r, D], logsumexp / delta as [r, Lq].
  grouped = lambda x: x.reshape(b, lq, kv_heads, r, d)
  by_kv = lambda x: x.reshape(b, kv_heads, r, lq)
  qspec = pl.BlockSpec((None, lq, None, r, d), lambda j, bb, kh: (bb, 0, kh, 0, 0))
  kspec = pl.BlockSpec((None, bk, None, d), lambda j, bb, kh: (bb, j, kh, 0))
  rowspec = pl.BlockSpec((None, None, r, lq), lambda j, bb, kh: (bb, kh, 0, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, st=st, bq=bq, heads_per_kv=r),
      grid=(lk // bk, b, kv_heads),
      in_specs=[pl.BlockSpec((None, None, plan.q.shape[-1]), lambda j, bb, kh: (bb, j, 0)),
                qspec, kspec, kspec, qspec, rowspec, rowspec,
                *_ids_specs(n, lq, lambda j, bb, kh: (bb, 0)),
                *_ids_specs(n, bk, lambda j, bb, kh: (bb, j))],
      out_specs=[kspec, kspec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params, interpret=st.interpret, name="mma_flash_dkv",
  )(plan.q, grouped(q), k, v, grouped(dout), by_kv(lse), by_kv(delta), *ids)
  return dq, dk, dv, None, None, None


_attend = flash.custom_vjp(_forward, _backward)
