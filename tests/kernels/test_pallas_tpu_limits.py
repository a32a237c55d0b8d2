"""The TPU kernel's memory limits: SMEM holds one example's visit lists (int16) whatever the
batch, the logsumexp residual is compact, and every kernel carries a VMEM limit sized from its
tiles; outputs and gradients still equal the dense reference on packed rows with images."""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import attention, masks
from mma_jax.kernels import pallas_tpu
from mma_jax.kernels.flash import BlockSizes
from tests.layouts import vectors

H, K = 4, 2
KERNELS = ("mma_splash_fwd", "mma_splash_dq", "mma_splash_dkv")


def _batch(rows, length):
  """Packed rows of examples (layout strings, optional turn strings) -> vectors [B, length]."""
  out = []
  for examples in rows:
    kinds, segs, turns = "", "", ""
    for s, (kind, turn) in enumerate(examples, start=1):
      kinds, segs = kinds + kind, segs + str(s) * len(kind)
      turns += turn or "0" * len(kind)
    pad = length - len(kinds)
    out.append(vectors(kinds + "." * pad, seg=segs + "0" * pad, turn=turns + "0" * pad))
  return {n: np.concatenate([v[n] for v in out]) for n in out[0]}


# Three rows, each packed differently (so each example needs its own visit lists): images
# before, inside and after the question, two turns, padding; 45 tokens, not a block multiple.
ROWS = [
    [("PIIIIPPAAA", None), ("PIIPPAAAA", None), ("IIPPPAA", None), ("PPIIIAA", None)],
    [("PPPIIIIIIIIPPAAAAAA", None), ("PIIIIPAA", None)],
    [("PIIPPAAPPA", "0000000111"), ("P" + "I" * 12 + "PPPAAAAA", None), ("PIIPAAAAAAAA", None)],
]
LENGTH = 45


def _ids(v, kind):
  return attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], kind)


@functools.cache
def _value_and_grads(name):
  def kernel(q, k, v, q_ids, k_ids):
    return pallas_tpu.attention(q, k, v, q_ids, k_ids, BlockSizes(8, 16, 16, 8), interpret=True)

  def reference(q, k, v, mask):
    return attention.dot_product_attention(q, k, v, mask)

  fn = kernel if name == "kernel" else reference

  @jax.jit
  def run(q, k, v, dout, *extra):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, *extra), q, k, v)
    return (out,) + vjp(dout)

  return run


@pytest.mark.parametrize("kind", masks.KINDS)
def test_outputs_and_gradients_match_the_dense_reference_per_example(kind):
  v = _batch(ROWS, LENGTH)
  b, d = len(ROWS), 8
  kq, kk, kv, kd = jax.random.split(jax.random.key(3), 4)
  q = jax.random.normal(kq, (b, LENGTH, H, d))
  k, val = jax.random.normal(kk, (b, LENGTH, K, d)), jax.random.normal(kv, (b, LENGTH, K, d))
  dout = jax.random.normal(kd, q.shape)
  dense = masks.dense_mask(v["segment_ids"], v["modality"], v["role"], v["turn"], kind)
  got = _value_and_grads("kernel")(q, k, val, dout, *_ids(v, kind))
  want = _value_and_grads("reference")(q, k, val, dout, dense)
  for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5,
                               err_msg=f"{kind} {what}")


def _pallas_calls(jaxpr):
  """(name, avals of its scalar-prefetched operands) of every pallas_call, nested ones too."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      n = eqn.params["grid_mapping"].num_index_operands
      found.append((eqn.params["name"], [x.aval for x in eqn.invars[:n]]))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jax.extend.core.Jaxpr):
          found += _pallas_calls(sub)
  return found


def _grad_inputs(batch, length, head_dim=128, dtype=jnp.bfloat16):
  """Rows of 64-token examples with images (one group channel for mma), zero q, k, v."""
  v = vectors(("P" + "I" * 40 + "P" * 10 + "A" * 13) * (length // 64))
  v["segment_ids"] = 1 + np.arange(length, dtype=np.int32)[None] // 64
  q_ids, k_ids = _ids({n: np.repeat(x, batch, 0) for n, x in v.items()}, "mma")
  q = jnp.zeros((batch, length, H, head_dim), dtype)
  kv = jnp.zeros((batch, length, K, head_dim), dtype)
  return q, kv, q_ids, k_ids


def _grad(q_ids, k_ids, blocks):
  def loss(q, k, v):
    out = pallas_tpu.attention(q, k, v, q_ids, k_ids, blocks, interpret=False)
    return out.astype(jnp.float32).sum()
  return jax.grad(loss, argnums=(0, 1, 2))


def test_smem_holds_one_examples_int16_visit_lists_whatever_the_batch():
  length, tile = 1024, 128  # 8 blocks a side: each list row is 1 + 8 entries
  prefetched = {}
  for batch in (1, 4):
    q, kv, q_ids, k_ids = _grad_inputs(batch, length)
    jaxpr = jax.make_jaxpr(_grad(q_ids, k_ids, BlockSizes(tile, tile, tile, tile)))(q, kv, kv)
    prefetched[batch] = _pallas_calls(jaxpr.jaxpr)
  assert sorted(name for name, _ in prefetched[4]) == sorted(KERNELS)
  assert prefetched[4] == prefetched[1], "scalar prefetch grew with the batch"
  n = length // tile
  for name, avals in prefetched[4]:
    # The batch index, then one example's flat visit lists as int16: 4 + 2 * 8 * 9 bytes.
    assert [(a.shape, a.dtype) for a in avals] == [((1,), jnp.int32), ((n * (1 + n),), jnp.int16)]
    assert sum(a.size * a.dtype.itemsize for a in avals) == 4 + 2 * n * (1 + n), name


def test_visit_lists_fall_back_to_int32_only_when_int16_cannot_hold_them():
  small = jnp.arange(2 * 3 * 5, dtype=jnp.int32).reshape(2, 3, 5)
  flat, width = pallas_tpu.smem_lists(small)
  assert flat.dtype == jnp.int16 and flat.shape == (2, 15) and width == 4
  np.testing.assert_array_equal(flat, np.asarray(small).reshape(2, 15))
  edge = jnp.full((1, 1, 1 + 32767), 32767, jnp.int32)  # m = 32767 blocks: still fits
  assert pallas_tpu.smem_lists(edge)[0].dtype == jnp.int16
  wide = jnp.full((1, 1, 1 + 32768), 32768, jnp.int32)  # a count of 32768 does not
  flat, width = pallas_tpu.smem_lists(wide)
  assert flat.dtype == jnp.int32 and width == 32768 and int(flat[0, -1]) == 32768


def test_logsumexp_residual_and_kernel_output_are_compact():
  v = _batch(ROWS, LENGTH)
  b, d = len(ROWS), 8
  q, kv = jnp.ones((b, LENGTH, H, d)), jnp.ones((b, LENGTH, K, d))
  q_ids, k_ids = _ids(v, "mma")
  fn = lambda q, k, v: pallas_tpu.attention(q, k, v, q_ids, k_ids, BlockSizes(8, 16, 16, 8),
                                            interpret=True)
  _, vjp = jax.vjp(fn, q, kv, kv)
  residuals = [(x.shape, x.dtype) for x in jax.tree.leaves(vjp)]
  lse = [s for s, t in residuals if t == jnp.float32 and math.prod(s) == b * H * 48]
  assert lse, residuals  # one value per (example, head, padded query)
  lanes = pallas_tpu.LANES
  assert not [s for s, t in residuals if t == jnp.float32 and s and s[-1] == lanes], residuals

  # On the TPU the forward kernel itself writes [H, 1, Lq] per example, not [H, Lq, 128].
  q, kv, q_ids, k_ids = _grad_inputs(2, 1024)
  fwd = lambda q, k, v: pallas_tpu.attention(q, k, v, q_ids, k_ids, interpret=False)
  text = jax.jit(fwd).trace(q, kv, kv).lower(lowering_platforms=("tpu",)).as_text()
  fwd_call = r'kernel_name = "mma_splash_fwd".*-> \((.*)\)$'
  results = re.search(fwd_call, text, re.MULTILINE).group(1)
  assert results == f"tensor<{H}x1024x128xbf16>, tensor<{H}x1x1024xf32>", results


def _vmem_limits(text):
  """kernel name -> the scoped VMEM limit in its custom call's backend config."""
  limits = {}
  for line in text.splitlines():
    name = re.search(r'kernel_name = "(\w+)"', line)
    if name and "tpu_custom_call" in line:
      size = re.search(r"scoped_memory_configs.*?size\\22: (\d+)", line)
      limits[name.group(1)] = int(size.group(1)) if size else None
  return limits


@pytest.mark.parametrize("bwd_tile", [512, 1024])
def test_tpu_lowering_at_large_tiles_with_three_id_channels_carries_vmem_limits(bwd_tile):
  q, kv, q_ids, k_ids = _grad_inputs(2, 2048)
  assert q_ids.group.shape[1] == 1  # segment, index and one group channel
  blocks = BlockSizes(512, 512, bwd_tile, bwd_tile)
  text = jax.jit(_grad(q_ids, k_ids, blocks)).trace(q, kv, kv).lower(
      lowering_platforms=("tpu",)).as_text()
  limits = _vmem_limits(text)
  assert sorted(limits) == sorted(KERNELS)
  for name, limit in limits.items():
    assert limit is not None and limit >= pallas_tpu.MIN_VMEM_LIMIT, (name, limit)
  # The dk/dv kernel's f32 [bk, bq] temporaries alone: (6 + 3 id channels) tiles.
  assert limits["mma_splash_dkv"] >= 9 * bwd_tile * bwd_tile * 4
  if bwd_tile == 1024:
    assert limits["mma_splash_dkv"] > pallas_tpu.MIN_VMEM_LIMIT
