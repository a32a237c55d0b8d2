"""Online-softmax block math shared by the blockwise XLA path and the GPU kernel.

Shapes are generic: logits s f32[..., bk] for rows [...] (a kernel's [bq], or XLA's
[B, K, r, bq]). Masked entries never enter an exp, so fully masked rows (padding) stay finite:
they end with l = 0, output 0 and logsumexp 0, and the backward gives them zero gradients.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mma_jax.kernels import block_mask

# Running-max start and masked-logit value: finite, so no inf - inf ever happens.
NEG = -1e30


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles along queries and keys, forward and backward; powers of two."""
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int

  def fit(self, lq: int, lk: int, minimum: int) -> "BlockSizes":
    """Short sides (decoding) get smaller tiles, down to `minimum`, instead of padding."""
    def fit(block, n):
      if block & (block - 1) or block < minimum:
        raise ValueError(f"Attention block size {block} must be a power of two >= {minimum}; "
                         "set the kernel's block_sizes.")
      return min(block, max(minimum, 1 << (n - 1).bit_length()))
    return BlockSizes(fit(self.block_q, lq), fit(self.block_k, lk),
                      fit(self.block_q_bwd, lq), fit(self.block_k_bwd, lk))

  def pairs(self) -> list[tuple[int, int]]:
    """(query, key) tiles of the forward and of the backward: the plans a kernel needs."""
    return [(self.block_q, self.block_k), (self.block_q_bwd, self.block_k_bwd)]

  def padded(self, lq: int, lk: int) -> tuple[int, int]:
    """Lengths padded to multiples of every tile on their side."""
    up = lambda n, b: -(-n // b) * b
    return up(lq, max(self.block_q, self.block_q_bwd)), up(lk, max(self.block_k, self.block_k_bwd))


def init(rows_shape, head_dim):
  """(m, l, acc) for rows of shape rows_shape: m f32[...], l f32[...], acc f32[..., D]."""
  return (jnp.full(rows_shape, NEG, jnp.float32), jnp.zeros(rows_shape, jnp.float32),
          jnp.zeros(rows_shape + (head_dim,), jnp.float32))


def softmax_step(m, l, s, mask):
  """One key block of the online softmax.

  Args: m, l f32[...] running max and sum; s f32[..., bk] scaled logits; mask bool[..., bk].
  Returns: (m, l, alpha, p): new max and sum, alpha f32[...] to rescale the accumulator by,
    p f32[..., bk] unnormalised probabilities (0 where masked).
  """
  m_new = jnp.maximum(m, jnp.max(jnp.where(mask, s, NEG), axis=-1))
  p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
  alpha = jnp.exp(m - m_new)
  return m_new, alpha * l + jnp.sum(p, axis=-1), alpha, p


def finish(m, l, acc):
  """(out f32[..., D], logsumexp f32[...]); rows that saw no key give 0 and 0."""
  empty = l == 0.0
  l = jnp.where(empty, 1.0, l)
  return acc / l[..., None], jnp.where(empty, 0.0, m + jnp.log(l))


def probs(s, lse, mask):
  """Backward: softmax probabilities f32[..., bk] recomputed from the saved logsumexp."""
  return jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)


def dlogits(p, dp, delta):
  """Backward: d(loss)/d(scaled logits) = p * (dp - delta), delta = rowsum(out * dout)."""
  return p * (dp - delta[..., None])


def custom_vjp(forward, backward):
  """attend(static, q, k, v, *ids) -> out, differentiable in q, k, v through `backward`.

  forward(static, q, k, v, *ids) -> (out, lse); backward(static, residuals, dout) ->
  (dq, dk, dv, None per ids argument), residuals = (q, k, v, *ids, out, lse).
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def attend(static, q, k, v, *ids):
    return forward(static, q, k, v, *ids)[0]

  def attend_fwd(static, q, k, v, *ids):
    out, lse = forward(static, q, k, v, *ids)
    return out, (q, k, v, *ids, out, lse)

  attend.defvjp(attend_fwd, backward)
  return attend


def prepare(geometry, q_ids, k_ids, head_dim: int, block_sizes: BlockSizes | None,
            interpret) -> dict:
  """The plans (block_mask.plans) of a Pallas kernel whose geometry(lq, lk, head_dim,
  block_sizes, interpret) -> (blocks, lq_padded, lk_padded): forward and backward tiles."""
  interpret = jax.default_backend() == "cpu" if interpret is None else interpret
  blocks, lq_p, lk_p = geometry(q_ids.segment.shape[1], k_ids.segment.shape[1], head_dim,
                                block_sizes, interpret)
  return block_mask.plans(q_ids, k_ids, lq_p, lk_p, blocks.pairs())
