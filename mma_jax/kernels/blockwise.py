"""Memory-efficient attention in plain XLA: online softmax over key blocks, mask per block.

For every query block a loop visits only the live key blocks of block_mask.plan, builds that
block's mask from the ids and folds it into an online softmax; memory is O(L * block), never
O(L^2). The backward (custom_vjp) recomputes the probabilities per block from the saved
logsumexp: a dq pass over query blocks and a dk/dv pass over key blocks, both skipping dead
blocks. Runs on any backend; the CPU default for long sequences.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mma_jax.kernels import block_mask, flash
from mma_jax.kernels.block_mask import TokenIds


@dataclasses.dataclass(frozen=True)
class _Static:
  block_q: int
  block_k: int
  scale: float


def _geometry(lq: int, lk: int, block_q: int, block_k: int):
  """Block sizes clamped to the lengths, and the lengths padded to them: (bq, bk, lq_p, lk_p)."""
  bq, bk = min(block_q, lq), min(block_k, lk)
  return bq, bk, block_mask.round_up(lq, bq), block_mask.round_up(lk, bk)


def prepare(q_ids: TokenIds, k_ids: TokenIds, head_dim: int | None = None, block_q: int = 256,
            block_k: int = 256) -> dict[str, block_mask.Plan]:
  """The visit lists `attention` with the same options needs (block_mask.plans)."""
  del head_dim  # the same tiles for every head size
  bq, bk, lq_p, lk_p = _geometry(q_ids.segment.shape[1], k_ids.segment.shape[1], block_q,
                                 block_k)
  return block_mask.plans(q_ids, k_ids, lq_p, lk_p, [(bq, bk)])


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, block_q: int = 256,
              block_k: int = 256, *, prepared=None):
  """Masked attention from the compact ids.

  Args: q f[B, Lq, H, D]; k, v f[B, Lk, K, D] (H a multiple of K); ids over Lq / Lk tokens;
    block sizes along queries / keys (clamped to the lengths; lengths are padded internally);
    prepared: `prepare`'s result for these ids and options (None: built here).
  Returns: f[B, Lq, H, D]; rows that may attend nothing are zero.
  """
  lq, lk = q.shape[1], k.shape[1]
  bq, bk, lq_p, lk_p = _geometry(lq, lk, block_q, block_k)
  if prepared is None:
    prepared = prepare(q_ids, k_ids, q.shape[-1], block_q, block_k)
  plan = block_mask.lookup(prepared, bq, bk)
  q_ids, k_ids = block_mask.pad(q_ids, lq_p), block_mask.pad(k_ids, lk_p)
  static = _Static(bq, bk, q.shape[-1] ** -0.5)
  out = _attend(static, block_mask.pad_length(q, lq_p), block_mask.pad_length(k, lk_p),
                block_mask.pad_length(v, lk_p), q_ids, k_ids, plan)
  return out[:, :lq]


# Layouts inside: queries as blocks [n, B, b, K, r, D] (scanned), keys as [B, n, b, K, D]
# (gathered per batch row, since each row visits its own blocks); ids likewise.

def _blocks(x, block: int, axis: int = 1):
  """Split `axis` of x into [..., n, block, ...]."""
  return x.reshape(x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1:])


def _id_blocks(ids: TokenIds, block: int):
  """(segment [B, n, b], index [B, n, b], group [B, n, G, b])."""
  return (_blocks(ids.segment, block), _blocks(ids.index, block),
          jnp.swapaxes(_blocks(ids.group, block, axis=2), 1, 2))


def _pick(x, i):
  """x[b, i[b]] for every batch row: x [B, n, ...], i i32[B] -> [B, ...]."""
  return jax.vmap(lambda row, j: row[j])(x, i)


def _mask(q_side, k_side, valid):
  """Block mask bool[B, 1, 1, bq, bk] from (seg, idx, grp) blocks of each side.

  q_side: seg/idx [B, bq], grp [B, G, bq]; k_side the same over bk; valid bool[B].
  """
  (qs, qi, qg), (ks, ki, kg) = q_side, k_side
  qx = lambda x: x[:, None, None, :, None]
  kx = lambda x: x[:, None, None, None, :]
  groups = range(qg.shape[1])
  m = block_mask.allowed(qx(qs), qx(qi), [qx(qg[:, g]) for g in groups],
                         kx(ks), kx(ki), [kx(kg[:, g]) for g in groups])
  return m & valid[:, None, None, None, None]


def _logits(q, k, scale):
  """q [B, bq, K, r, D], k [B, bk, K, D] -> f32[B, K, r, bq, bk]."""
  return jnp.einsum("bqkrd,bskd->bkrqs", q, k, preferred_element_type=jnp.float32) * scale


def _visit(lists, body, carry):
  """Run body(j, block [B], valid bool[B], carry) over the visit list rows [B, 1 + n]."""
  count = lists[:, 0]

  def step(j, c):
    return body(lists[:, 1 + j], j < count, c)

  return jax.lax.fori_loop(0, jnp.max(count), step, carry)


def _split_heads(q, kv_heads):
  b, length, h, d = q.shape
  return q.reshape(b, length, kv_heads, h // kv_heads, d)


def _forward(st: _Static, q, k, v, q_ids, k_ids, plan):
  """-> out f[B, Lq, H, D], lse f32[nq, B, K, r, bq]."""
  b, lq, h, d = q.shape
  kv_heads = k.shape[2]
  qb = jnp.moveaxis(_blocks(_split_heads(q, kv_heads), st.block_q), 1, 0)
  q_side = [jnp.moveaxis(x, 1, 0) for x in _id_blocks(q_ids, st.block_q)]
  kb, vb = _blocks(k, st.block_k), _blocks(v, st.block_k)
  k_side = _id_blocks(k_ids, st.block_k)

  def one_block(xs):
    qblk, qs, qi, qg, lists = xs

    def body(j, valid, c):
      m, l, acc = c
      mask = _mask((qs, qi, qg), [_pick(x, j) for x in k_side], valid)
      s = _logits(qblk, _pick(kb, j), st.scale)
      m, l, alpha, p = flash.softmax_step(m, l, s, mask)
      pv = jnp.einsum("bkrqs,bskd->bkrqd", p.astype(v.dtype), _pick(vb, j),
                      preferred_element_type=jnp.float32)
      return m, l, alpha[..., None] * acc + pv

    carry = flash.init((b, kv_heads, h // kv_heads, st.block_q), d)
    out, lse = flash.finish(*_visit(lists, body, carry))
    return jnp.einsum("bkrqd->bqkrd", out).astype(q.dtype), lse

  out, lse = jax.lax.map(one_block, (qb, *q_side, jnp.moveaxis(plan.kv, 1, 0)))
  return jnp.moveaxis(out, 0, 1).reshape(b, lq, h, d), lse


def _backward(st: _Static, res, dout):
  q, k, v, q_ids, k_ids, plan, out, lse = res
  b, lq, h, d = q.shape
  kv_heads = k.shape[2]
  # delta = rowsum(out * dout), laid out like lse: [nq, B, K, r, bq].
  delta = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1)
  delta = jnp.einsum("nbqkr->nbkrq", jnp.moveaxis(
      _blocks(delta.reshape(b, lq, kv_heads, h // kv_heads), st.block_q), 1, 0))
  qb = _blocks(_split_heads(q, kv_heads), st.block_q)        # [B, nq, bq, K, r, D]
  dob = _blocks(_split_heads(dout, kv_heads), st.block_q)
  kb, vb = _blocks(k, st.block_k), _blocks(v, st.block_k)    # [B, nk, bk, K, D]
  q_side, k_side = _id_blocks(q_ids, st.block_q), _id_blocks(k_ids, st.block_k)
  lse_b, delta_b = jnp.moveaxis(lse, 0, 1), jnp.moveaxis(delta, 0, 1)  # [B, nq, K, r, bq]

  def block_grads(qblk, doblk, lse_blk, delta_blk, kblk, vblk, mask):
    """ds f32[B, K, r, bq, bk] (already times scale) and p for one block pair."""
    p = flash.probs(_logits(qblk, kblk, st.scale), lse_blk, mask)
    dp = jnp.einsum("bqkrd,bskd->bkrqs", doblk, vblk, preferred_element_type=jnp.float32)
    return flash.dlogits(p, dp, delta_blk) * st.scale, p

  def dq_block(xs):
    qblk, doblk, lse_blk, delta_blk, qs, qi, qg, lists = xs

    def body(j, valid, dq):
      mask = _mask((qs, qi, qg), [_pick(x, j) for x in k_side], valid)
      kblk = _pick(kb, j)
      ds, _ = block_grads(qblk, doblk, lse_blk, delta_blk, kblk, _pick(vb, j), mask)
      return dq + jnp.einsum("bkrqs,bskd->bqkrd", ds.astype(k.dtype), kblk,
                             preferred_element_type=jnp.float32)

    return _visit(lists, body, jnp.zeros(qblk.shape, jnp.float32)).astype(q.dtype)

  per_q = lambda x: jnp.moveaxis(x, 1, 0)
  dq = jax.lax.map(dq_block, (per_q(qb), per_q(dob), lse, delta,
                              *[per_q(x) for x in q_side], per_q(plan.kv)))
  dq = jnp.moveaxis(dq, 0, 1).reshape(q.shape)

  def dkv_block(xs):
    kblk, vblk, ks, ki, kg, lists = xs

    def body(i, valid, c):
      dk, dv = c
      mask = _mask([_pick(x, i) for x in q_side], (ks, ki, kg), valid)
      qblk, doblk = _pick(qb, i), _pick(dob, i)
      ds, p = block_grads(qblk, doblk, _pick(lse_b, i), _pick(delta_b, i), kblk, vblk, mask)
      dv = dv + jnp.einsum("bkrqs,bqkrd->bskd", p.astype(dout.dtype), doblk,
                           preferred_element_type=jnp.float32)
      dk = dk + jnp.einsum("bkrqs,bqkrd->bskd", ds.astype(q.dtype), qblk,
                           preferred_element_type=jnp.float32)
      return dk, dv

    zeros = jnp.zeros(kblk.shape, jnp.float32)
    dk, dv = _visit(lists, body, (zeros, zeros))
    return dk.astype(k.dtype), dv.astype(v.dtype)

  dk, dv = jax.lax.map(dkv_block, (per_q(kb), per_q(vb), *[per_q(x) for x in k_side],
                                   per_q(plan.q)))
  dk, dv = (jnp.moveaxis(x, 0, 1).reshape(k.shape) for x in (dk, dv))
  return dq, dk, dv, None, None, None


_attend = flash.custom_vjp(_forward, _backward)
