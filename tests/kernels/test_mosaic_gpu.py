"""The Pallas Mosaic GPU kernel agrees with the dense mask, in GPU interpret mode on the CPU.

Random packed layouts (several examples per row, images of two modalities, several turns,
padding, lengths that are not tile multiples), every mask kind, outputs and gradients, GQA;
a decode chunk against a KV cache; and the real Mosaic GPU lowering (no GPU needed) at head
dims 64 and 128. Kept small: interpret mode runs every warpgroup as a Python thread.
"""
import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

plgpu = pytest.importorskip("jax.experimental.pallas.mosaic_gpu")
if jax.__version_info__ < (0, 11) or not hasattr(plgpu, "InterpretGPUParams"):
  pytest.skip(f"Pallas Mosaic GPU interpret mode needs jax >= 0.11 (installed: {jax.__version__})",
              allow_module_level=True)

from mma_jax import attention, masks  # noqa: E402
from mma_jax.kernels import mosaic_gpu  # noqa: E402
from mma_jax.kernels.flash import BlockSizes  # noqa: E402
from tests.layouts import vectors  # noqa: E402

B, L, H, K, D = 2, 100, 4, 2, 64  # 100 tokens: padded to 128 inside (tiles of 64 / 128)


def packed_row(rng, length):
  """(segment, modality, role, turn) of one random packed row, like tests.test_masks."""
  seg, mod, role, turn = [], [], [], []
  s = 0
  while len(seg) < length - 8:
    s += 1
    for t in range(rng.integers(1, 4)):
      for _ in range(rng.integers(1, 4)):  # runs of prompt text or image tokens
        m = rng.choice([0, 0, 1, 2])
        n = rng.integers(2, 9) if m else rng.integers(1, 5)
        seg += [s] * n; turn += [t] * n; role += [1] * n; mod += [m] * n
      n = rng.integers(0, 5)
      seg += [s] * n; turn += [t] * n; role += [2] * n; mod += [0] * n
  seg, mod, role, turn = (np.array((x + [0] * length)[:length], np.int32)
                          for x in (seg, mod, role, turn))
  seg[length - rng.integers(1, 8):] = 0  # some padding at the end of every row
  role[seg == 0] = 0
  return seg, mod, role, turn


def _ids(rows, kind, start=0):
  """TokenIds with 2 group channels always (images of modality 1 and 2; an all -1 channel
  never matches), so every kind shares one compiled shape."""
  args = [jnp.asarray(np.stack(x)) for x in zip(*rows)]
  qg, kg = masks.group_ids(*args, kind, num_modalities=3)
  pad = lambda g: jnp.pad(g, ((0, 0), (0, 2 - g.shape[1]), (0, 0)), constant_values=-1)
  length = args[0].shape[1]
  index = start + jnp.broadcast_to(jnp.arange(length), args[0].shape)
  return attention.TokenIds(args[0], index, pad(qg)), attention.TokenIds(args[0], index, pad(kg))


@functools.cache
def _value_and_grads(name, **kw):
  """jitted (q, k, v, q_ids, k_ids, dout) -> (out, dq, dk, dv); the kernel with its interpret
  defaults (one warpgroup per CTA) unless kw says otherwise."""
  kw = {"interpret": True, **kw}
  if name == "xla":
    fn, prepare = attention._dense, attention._dense_mask
  else:  # as the model calls it: the plans prepared once, outside the differentiated call
    fn = functools.partial(mosaic_gpu.attention, **kw)
    prepare = functools.partial(mosaic_gpu.prepare, **{k: kw[k] for k in kw if k in (
        "block_sizes", "interpret")})

  @jax.jit
  def run(q, k, v, q_ids, k_ids, dout):
    prepared = prepare(q_ids, k_ids, q.shape[-1])
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, q_ids, k_ids, prepared=prepared), q, k, v)
    return (out,) + vjp(dout.astype(out.dtype))

  return run


def _inputs(seed, lq=L, lk=L, h=H, kv=K, d=D):
  kq, kk, kv_, kd = jax.random.split(jax.random.key(seed), 4)
  bf16 = jnp.bfloat16
  return (jax.random.normal(kq, (B, lq, h, d), bf16), jax.random.normal(kk, (B, lk, kv, d), bf16),
          jax.random.normal(kv_, (B, lk, kv, d), bf16), jax.random.normal(kd, (B, lq, h, d), bf16))


def _close(got, want, what):
  """bf16 inputs, P rounded to bf16 before PV: errors ~1e-2 of the largest value; a wrong mask
  entry moves values by O(1)."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.isfinite(got).all(), what
  np.testing.assert_allclose(got, want, atol=2e-2 * max(1.0, np.abs(want).max()), rtol=2e-2,
                             err_msg=what)


@pytest.mark.parametrize("seed", [0, 1])
def test_outputs_and_gradients_match_the_dense_reference_for_every_kind(seed):
  rng = np.random.default_rng(seed)
  rows = [packed_row(rng, L) for _ in range(B)]
  q, k, v, dout = _inputs(seed)
  f32 = [x.astype(jnp.float32) for x in (q, k, v, dout)]
  for kind in masks.KINDS:
    q_ids, k_ids = _ids(rows, kind)
    got = _value_and_grads("mosaic_gpu")(q, k, v, q_ids, k_ids, dout)
    want = _value_and_grads("xla")(*f32[:3], q_ids, k_ids, f32[3])
    for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
      assert g.dtype == jnp.bfloat16
      _close(g, w, f"{kind} {what}")
    padding = np.asarray(q_ids.segment) == 0
    np.testing.assert_array_equal(np.asarray(got[0], np.float32)[padding], 0.0)
    np.testing.assert_array_equal(np.asarray(got[1], np.float32)[padding], 0.0)


def _multi_warpgroup_check():
  """Two warpgroups per CTA (forward / dq: two query heads; dk/dv: two 64-key halves), 64-key
  tiles forward so that slots are refilled, race detection on; one long example and packed
  ones. Run in a subprocess by the test below."""
  from mma_jax.kernels import block_mask
  rng = np.random.default_rng(3)
  length = 200
  rows = [packed_row(rng, length) for _ in range(B)]
  seg, mod, role, turn = rows[0]
  rows[0] = (np.where(seg > 0, 1, 0).astype(np.int32), mod, role, np.zeros_like(turn))
  q, k, v, dout = _inputs(3, lq=length, lk=length)
  params = plgpu.InterpretGPUParams(detect_races=True)
  for kind in ("mma", "prefix"):
    q_ids, k_ids = _ids(rows, kind)
    lists = block_mask.plan(block_mask.pad(q_ids, 256), block_mask.pad(k_ids, 256), 64, 64).kv
    assert int(lists[..., 0].max()) > 2, "no key slot gets refilled"
    got = _value_and_grads("mosaic_gpu", interpret=params, heads_per_cta=2,
                           block_sizes=BlockSizes(64, 64, 64, 128))(q, k, v, q_ids, k_ids, dout)
    want = _value_and_grads("xla")(*[x.astype(jnp.float32) for x in (q, k, v)], q_ids, k_ids,
                                   dout.astype(jnp.float32))
    for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
      _close(g, w, f"{kind} {what}")


def test_two_warpgroups_per_cta_without_races():
  """GPU interpret mode runs warpgroups as threads that wait on each other inside XLA CPU
  callbacks; with NPROC (XLA's CPU pool) at the core count (2 here) they can starve each other
  and hang, so this check runs in a fresh process with a larger pool."""
  code = "from tests.kernels import test_mosaic_gpu as t; t._multi_warpgroup_check()"
  root = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, NPROC="16")
  try:
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, timeout=300,
                          capture_output=True, text=True)
  except subprocess.TimeoutExpired:
    pytest.fail("two-warpgroup interpret check hung (a barrier wait that never completes?)")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.mark.parametrize("d, heads", [(64, (8, 2)), (128, (3, 1))], ids=["d64-gqa4", "d128-mha"])
def test_decoding_chunk_over_cache_slots(d, heads):
  """A 5-token chunk at slots 30..34 of a 37-slot cache (empty slots after it), bf16."""
  h, kv = heads
  v = vectors(("PIIPPAA" * 5) + "..", seg="1" * 35 + "00")
  v = {n: np.repeat(x, B, 0) for n, x in v.items()}
  q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  q_ids = attention.TokenIds(q_ids.segment[:, 30:35], q_ids.index[:, 30:35],
                             q_ids.group[:, :, 30:35])
  q, k, val, _ = _inputs(0, lq=5, lk=37, h=h, kv=kv, d=d)
  want = attention._dense(*[x.astype(jnp.float32) for x in (q, k, val)], q_ids, k_ids)
  got = jax.jit(functools.partial(mosaic_gpu.attention, interpret=True))(q, k, val, q_ids, k_ids)
  assert got.shape == q.shape and got.dtype == jnp.bfloat16
  _close(got, want, f"decode d={d}")


@pytest.mark.parametrize("head_dim, heads", [(64, (8, 2)), (128, (4, 4))],
                         ids=["d64-gqa4", "d128-mha"])
def test_forward_and_backward_lower_for_the_gpu(head_dim, heads):
  """The real Mosaic GPU lowering (wgmma, TMA, barriers) on a CPU-only machine, with the GPU
  defaults (d64-gqa4: two warpgroups per CTA everywhere; d128-mha: one): interpret mode cannot
  catch a construct the lowering rejects (layouts, tile shapes)."""
  layout = ("P" + "I" * 60 + "P" * 20 + "A" * 19) * 3  # 300 tokens, 3 examples
  v = {n: jnp.repeat(x, 2, axis=0) for n, x in vectors(layout, seg="1" * 100 + "2" * 100 +
                                                         "3" * 100).items()}
  q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  q = jnp.zeros((2, 300, heads[0], head_dim), jnp.bfloat16)
  kv = jnp.zeros((2, 300, heads[1], head_dim), jnp.bfloat16)

  def loss(q, k, v):
    out = mosaic_gpu.attention(q, k, v, q_ids, k_ids, interpret=False)
    return out.astype(jnp.float32).sum()

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(
      lowering_platforms=("cuda",))
  assert lowered.as_text().count("custom_call @mosaic_gpu") == 3  # forward, dq, dk/dv


def test_bad_tiles_are_a_clear_error():
  q = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
  v = vectors("PIIPPAA.")
  ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  with pytest.raises(ValueError, match="query blocks must be 64"):
    mosaic_gpu.attention(q, q, q, *ids, block_sizes=BlockSizes(128, 128, 64, 64))
  with pytest.raises(ValueError, match="key blocks must be"):
    mosaic_gpu.attention(q, q, q, *ids, block_sizes=BlockSizes(64, 32, 64, 64))
