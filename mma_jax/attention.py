"""Dot-product attention that takes the compact mask form, never an L x L array from outside.

One interface, several implementations (config key model.llm.attention):

  xla         dense reference: builds the [B, Lq, Lk] mask from the ids per call (tests, short
              sequences).
  blockwise   XLA, online softmax over key blocks, mask per block, dead blocks skipped;
              O(L * block) memory forward and backward (CPU, long sequences).
  pallas_gpu  Pallas Triton flash kernel, forward and backward, dead blocks skipped (GPU).
              JAX 0.11 deprecated Pallas's Triton backend (its warning is shown once).
  mosaic_gpu  Pallas Mosaic GPU flash kernel for Hopper (wgmma, TMA, pipelined over the live
              blocks), forward and backward, dead blocks skipped; the supported successor of
              pallas_gpu (sm_90 only: wgmma; jax >= 0.11). Second in auto until a device
              check passes on the current kernel (below).
  pallas_tpu  Splash-style Pallas Mosaic kernel, forward and backward, dead blocks skipped (TPU).
  tokamax     tokamax's Mosaic GPU flash attention (Hopper / Blackwell; optional package) with
              per-row key ranges after one key reordering (kernels/tokamax_gpu.py).
  auto        the measured-fastest implementation that runs here (below).

What `auto` picks, by backend, and why. GPU: the first of GPU_PREFERENCE that can run. Measured
on one H200, 2026-12-04, jax 0.11.2, in one device-check run (MMA, bf16, 32 query / 8 kv heads,
head dim 64, 2 packed rows of 8192 tokens, forward+backward; docs/performance.md):

  pallas_gpu  1.81 ms  while the installed JAX has Pallas's Triton lowering (0.11.2 and 0.12
                       have it, deprecated); any CUDA GPU Triton supports; 1.56x torch
                       FlexAttention; correct in two device checks
  mosaic_gpu  1.41 ms  on a Hopper GPU (sm_90) with jax >= 0.11; 2.0x FlexAttention. The kernel
                       measured then (commit 1cd452f) passed every correctness check; the
                       interpreter's race detector then flagged a missing proxy fence, fixed
                       since (1903658) but not yet run on a GPU: it takes the first place once a
                       device check passes on it
  tokamax     12.07 ms its backward skips no tile; correct (registry key "mosaic_gpu")
  blockwise   28.5 ms  XLA; runs everywhere
  (cuDNN through jax.nn.dot_product_attention with a dense mask: 15.2 ms, and O(L^2) memory)

TPU: pallas_tpu. CPU (and any other backend): xla up to DENSE_MAX_KEYS keys, blockwise beyond.

What a kernel derives from the ids alone (its block plans, xla's dense mask, tokamax's key
order) is built by `prepare` once per model call (models/llm.py) and passed to every layer's
`attention(..., prepared=)`; without it, each call builds its own.

The Pallas kernels run in interpret mode when the default backend is the CPU (tests). Inside a
mesh context the kernels run per shard (shard_map over the batch and heads axes of the current
logical rules), since XLA cannot partition a custom kernel call itself.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from mma_jax import masks
from mma_jax.kernels import IMPLEMENTATIONS, blockwise, mosaic_gpu, pallas_gpu, pallas_tpu
from mma_jax.kernels import tokamax_gpu
from mma_jax.kernels.block_mask import TokenIds

__all__ = ["TokenIds", "token_ids", "dot_product_attention", "attention", "prepare",
           "IMPLEMENTATIONS", "resolve", "unavailable"]

# auto on CPU: the dense path up to this many keys, blockwise beyond (see benchmarks/attention.py).
DENSE_MAX_KEYS = 512
# auto on a GPU: the first of these that can run (see the module docstring for the figures).
GPU_PREFERENCE = ("pallas_gpu", "mosaic_gpu", "tokamax", "blockwise")
_GPU = ("gpu", "cuda", "rocm")


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


def _dense_mask(q_ids: TokenIds, k_ids: TokenIds, head_dim: int | None = None):
  """bool[B, Lq, Lk]: the xla path's preparation."""
  del head_dim
  return masks.compact_mask(q_ids.segment, q_ids.index, q_ids.group,
                            k_ids.segment, k_ids.index, k_ids.group)


def _dense(q, k, v, q_ids: TokenIds, k_ids: TokenIds, *, prepared=None):
  mask = _dense_mask(q_ids, k_ids) if prepared is None else prepared
  return dot_product_attention(q, k, v, mask)


# name: (attention(q, k, v, q_ids, k_ids, *, prepared), prepare(q_ids, k_ids, head_dim)).
_KERNELS = {
    "xla": (_dense, _dense_mask),
    "blockwise": (blockwise.attention, blockwise.prepare),
    "pallas_gpu": (pallas_gpu.attention, pallas_gpu.prepare),
    "mosaic_gpu": (mosaic_gpu.attention, mosaic_gpu.prepare),
    "pallas_tpu": (pallas_tpu.attention, pallas_tpu.prepare),
    # A mask that is not ranges in tokamax's key order (a study kind) runs blockwise instead.
    "tokamax": (functools.partial(tokamax_gpu.attention, fallback=blockwise.attention),
                functools.partial(tokamax_gpu.prepare, fallback=blockwise.prepare)),
}
assert IMPLEMENTATIONS == ("auto",) + tuple(_KERNELS), "kernels.IMPLEMENTATIONS is out of date"


def resolve(implementation: str, num_keys: int, backend: str | None = None) -> str:
  """The concrete implementation `implementation` stands for (see the module docstring)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation {implementation!r}; expected one of "
                     f"{IMPLEMENTATIONS} (config key model.llm.attention).")
  if implementation != "auto":
    return implementation
  backend = backend or jax.default_backend()
  if backend in _GPU:
    return next(n for n in GPU_PREFERENCE if unavailable(n, backend) is None)
  if backend == "tpu":
    return "pallas_tpu"
  return "xla" if num_keys <= DENSE_MAX_KEYS else "blockwise"


def gpu_arch() -> str | None:
  """This process's first GPU's compute capability ("9.0"), or None without a GPU."""
  if jax.default_backend() not in _GPU:
    return None
  return str(getattr(jax.devices()[0], "compute_capability", "")) or None


def unavailable(implementation: str, backend: str | None = None) -> str | None:
  """Why `implementation` cannot run on `backend` (default: this process's), or None if it can.

  The Pallas kernels also run on the CPU, in interpret mode (slow: for tests only).
  """
  backend = backend or jax.default_backend()
  if implementation not in IMPLEMENTATIONS:
    return f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}"
  if implementation == "pallas_tpu" and backend not in ("tpu", "cpu"):
    return "a Pallas TPU (Mosaic) kernel: runs on a TPU, or interpreted on the CPU"
  if implementation == "pallas_gpu":
    if not pallas_gpu.AVAILABLE:
      return pallas_gpu.UNAVAILABLE
    if backend not in _GPU + ("cpu",):
      return "a Pallas Triton kernel: runs on a GPU, or interpreted on the CPU"
  if implementation == "mosaic_gpu":
    if backend not in _GPU + ("cpu",):
      return "a Pallas Mosaic GPU kernel: runs on a Hopper GPU, or interpreted on the CPU"
    if jax.__version_info__ < (0, 11):  # and Pallas's GPU interpret mode starts there
      return f"a Pallas Mosaic GPU kernel checked from jax 0.11 on (this is {jax.__version__})"
    arch = gpu_arch()
    if backend in _GPU and arch is not None and not arch.startswith("9"):
      return f"a Hopper (sm_90) kernel: wgmma; this GPU is sm_{arch.replace('.', '')}"
  if implementation == "tokamax":
    if not tokamax_gpu.installed():
      return tokamax_gpu.INSTALL_HINT
    if backend not in _GPU:
      return "tokamax's Mosaic GPU kernel needs an NVIDIA Hopper or Blackwell GPU"
  return None


def _per_shard(fn, q, k, prepared):
  """fn under shard_map over the batch (and heads) axes when a multi-device mesh is active."""
  mesh = jax.sharding.get_abstract_mesh()  # of `with jax.set_mesh(mesh)` (sharding.use)
  if mesh.empty or mesh.size == 1:
    return fn
  batch, heads, kv_heads = nn.logical_to_mesh_axes(("batch", "heads", "kv_heads"))
  size = lambda a: math.prod(mesh.shape[n] for n in ((a,) if isinstance(a, str) else a or ()))
  if q.shape[0] % size(batch):
    batch = None
  if q.shape[2] % size(heads) or k.shape[2] % size(kv_heads) or size(heads) != size(kv_heads):
    heads = kv_heads = None
  q_spec = PartitionSpec(batch, None, heads, None)
  kv_spec = PartitionSpec(batch, None, kv_heads, None)
  ids_spec = TokenIds(PartitionSpec(batch, None), PartitionSpec(batch, None),
                      PartitionSpec(batch, None, None))
  # Every prepared array is per batch row (leading axis), but for scalars (tokamax's `exact`).
  prepared_spec = jax.tree.map(
      lambda x: PartitionSpec(batch, *[None] * (x.ndim - 1)) if x.ndim else PartitionSpec(),
      prepared)
  return jax.shard_map(fn, mesh=mesh,
                       in_specs=(q_spec, kv_spec, kv_spec, ids_spec, ids_spec, prepared_spec),
                       out_specs=q_spec, check_vma=False)


def prepare(q_ids: TokenIds, k_ids: TokenIds, head_dim: int, implementation: str = "auto"):
  """What `attention` derives from the ids alone (the block plans' sorts; xla's dense mask;
  tokamax's key order), built once per model call and passed to every layer's call.

  Args: q_ids / k_ids over Lq / Lk tokens (the same as the attention calls'); head_dim: of
    the calls' q; implementation: theirs.
  Returns: a pytree of arrays, each with the batch as its leading axis (or a scalar).
  """
  name = resolve(implementation, k_ids.segment.shape[1])
  return _KERNELS[name][1](q_ids, k_ids, head_dim)


def attention(q, k, v, q_ids: TokenIds, k_ids: TokenIds, implementation: str = "auto",
              prepared=None):
  """Masked attention from the compact ids.

  Args: q f[B, Lq, H, D]; k, v f[B, Lk, K, D]; q_ids / k_ids over Lq / Lk tokens;
    implementation: one of IMPLEMENTATIONS; prepared: `prepare`'s result for these ids and
    implementation (None: built inside this call).
  Returns: f[B, Lq, H, D]; rows that may attend nothing are zero.
  """
  name = resolve(implementation, k.shape[1])
  kernel = _KERNELS[name][0]
  fn = lambda q, k, v, q_ids, k_ids, prepared: kernel(q, k, v, q_ids, k_ids, prepared=prepared)
  if name != "xla":
    fn = _per_shard(fn, q, k, prepared)
  return fn(q, k, v, q_ids, k_ids, prepared)
