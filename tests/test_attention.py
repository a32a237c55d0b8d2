"""The attention interface: every implementation agrees with the dense reference.

Outputs and gradients, on random packed layouts for causal, mma and prefix, with padding rows
and lengths that are not multiples of the (tiny) blocks, so block skipping is exercised. The
Pallas kernels run in interpret mode on the CPU. One compile per implementation: the layouts
are runtime data.
"""
import functools
import os
import subprocess
import sys
import textwrap

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import attention, masks
from mma_jax.kernels import blockwise, pallas_gpu, pallas_tpu
from mma_jax.kernels.flash import BlockSizes
from tests.layouts import vectors
from tests.test_masks import packed_rows

B, L, H, K, D = 2, 37, 4, 2, 8   # 37 tokens: not a multiple of any block below
TINY = BlockSizes(8, 16, 16, 8)
# name: (kernel module, its options); `attention` and `prepare` take the same options.
KERNELS = {
    "blockwise": (blockwise, dict(block_q=8, block_k=16)),
    "pallas_gpu": (pallas_gpu, dict(block_sizes=TINY, interpret=True)),
    "pallas_tpu": (pallas_tpu, dict(block_sizes=TINY, interpret=True)),
}
IMPLEMENTATIONS = {name: functools.partial(module.attention, **options)
                   for name, (module, options) in KERNELS.items()}


def test_matches_jax_reference_with_dense_mask_and_padding_rows_are_zero():
  v = vectors("PIIPPA..", seg="11111100")
  q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (1, 8, 4, 16))
  k = jax.random.normal(kk, (1, 8, 2, 16))
  val = jax.random.normal(kv, (1, 8, 2, 16))
  out = attention.attention(q, k, val, q_ids, k_ids, implementation="xla")
  dense = masks.dense_mask(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  # jax's reference repeats kv heads itself (GQA) and takes a [B, H, Lq, Lk] mask.
  ref = jax.nn.dot_product_attention(q[:, :6], k[:, :6], val[:, :6],
                                     mask=dense[:, None, :6, :6], implementation="xla")
  np.testing.assert_allclose(np.asarray(out[:, :6]), np.asarray(ref), rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(np.asarray(out[:, 6:]), 0.0)


def test_unknown_implementation_is_a_clear_error():
  v = vectors("PA")
  ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "causal")
  x = jnp.zeros((1, 2, 1, 4))
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    attention.attention(x, x, x, *ids, implementation="flash")


def test_config_names_the_key_of_an_unknown_implementation():
  from mma_jax.models import configs
  with pytest.raises(ValueError, match="model.llm.attention='flash'"):
    configs.vlm_config_from_dict({"llm": {"attention": "flash"}})


def test_auto_picks_the_measured_fastest_kernel_that_runs(monkeypatch):
  # Measured on an H200 with jax 0.11.2: pallas_gpu while Pallas Triton imports (55e6723's
  # auto gave tokamax, which crashed, or blockwise, 15x slower), then mosaic_gpu (faster, but
  # its current version has not run on a GPU yet), which needs jax >= 0.11 and Hopper.
  assert attention.pallas_gpu.AVAILABLE
  assert attention.resolve("auto", 8192, "gpu") == "pallas_gpu"
  assert attention.resolve("auto", 160, "cuda") == "pallas_gpu"
  monkeypatch.setattr(attention.pallas_gpu, "AVAILABLE", False)
  monkeypatch.setattr(attention.tokamax_gpu, "installed", lambda: False)
  hopper = jax.__version_info__ >= (0, 11)
  monkeypatch.setattr(attention, "gpu_arch", lambda: "9.0")  # an H100 / H200
  assert attention.resolve("auto", 8192, "gpu") == ("mosaic_gpu" if hopper else "blockwise")
  monkeypatch.setattr(attention, "gpu_arch", lambda: "8.0")  # an A100: no wgmma
  assert ("sm_80" if hopper else "jax 0.11") in attention.unavailable("mosaic_gpu", "gpu")
  # A JAX without the Triton lowering, no Hopper: tokamax when installed, else blockwise.
  assert "no Pallas Triton backend" in attention.unavailable("pallas_gpu", "gpu")
  for installed, want in ((True, "tokamax"), (False, "blockwise")):
    monkeypatch.setattr(attention.tokamax_gpu, "installed", lambda installed=installed: installed)
    assert attention.resolve("auto", 8192, backend="gpu") == want
    assert attention.resolve("auto", 160, backend="cuda") == want
  assert attention.unavailable("pallas_tpu", "gpu") and attention.unavailable("tokamax", "tpu")
  assert attention.unavailable("xla", "gpu") is None
  assert attention.resolve("auto", 8192, backend="tpu") == "pallas_tpu"
  assert attention.resolve("auto", 160, backend="cpu") == "xla"
  assert attention.resolve("auto", 8192, backend="cpu") == "blockwise"
  assert attention.resolve("pallas_tpu", 160, backend="cpu") == "pallas_tpu"


@pytest.mark.skipif(jax.__version_info__ < (0, 11), reason="JAX < 0.11: Triton not deprecated")
def test_the_triton_deprecation_warning_appears_once_per_process():
  # Lowering a Triton kernel for CUDA on this CPU-only machine runs jax's Triton lowering rule
  # up to its device lookup, which fails after the rule has warned. Twice, in a fresh process
  # with Python's default warning filters: one warning.
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp
      from mma_jax import attention
      from tests.layouts import vectors
      v = vectors("PIIIPPAA")
      ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
      q = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
      for _ in range(2):
        f = jax.jit(lambda q: attention.pallas_gpu.attention(q, q, q, *ids, interpret=False))
        try:
          f.trace(q).lower(lowering_platforms=("cuda",))
        except RuntimeError as e:
          assert "GPU" in str(e), e
      """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count("The Pallas Triton backend is deprecated") == 1, proc.stderr[-3000:]


def _ids(rows, kind):
  """TokenIds for a batch of packed rows, with a third modality and 2 group channels always
  (an all -1 channel never matches), so every kind shares one compiled shape."""
  args = [jnp.asarray(np.stack(x)) for x in zip(*rows)]
  qg, kg = masks.group_ids(*args, kind, num_modalities=3)
  pad = lambda g: jnp.pad(g, ((0, 0), (0, 2 - g.shape[1]), (0, 0)), constant_values=-1)
  index = jnp.broadcast_to(jnp.arange(L), (B, L))
  return (attention.TokenIds(args[0], index, pad(qg)),
          attention.TokenIds(args[0], index, pad(kg)), args)


@functools.cache
def _value_and_grads(name):
  """As the model calls a kernel: its plans prepared once, outside the differentiated call."""
  if name == "xla":
    fn, prepare = attention._dense, attention._dense_mask
  else:
    module, options = KERNELS[name]
    fn = functools.partial(module.attention, **options)
    prepare = functools.partial(module.prepare, **options)

  @jax.jit
  def run(q, k, v, q_ids, k_ids, dout):
    prepared = prepare(q_ids, k_ids, D)
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, q_ids, k_ids, prepared=prepared), q, k, v)
    return (out,) + vjp(dout)

  return run


def _inputs(seed, lq=L, dtype=jnp.float32):
  kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(kq, (B, lq, H, D), dtype), jax.random.normal(kk, (B, L, K, D), dtype),
          jax.random.normal(kv, (B, L, K, D), dtype), jax.random.normal(kd, (B, lq, H, D), dtype))


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(rows=st.tuples(*[packed_rows(length=L)] * B), seed=st.integers(0, 3))
def test_outputs_and_gradients_match_the_dense_reference(name, rows, seed):
  q, k, v, dout = _inputs(seed)
  for kind in masks.KINDS:
    q_ids, k_ids, args = _ids(rows, kind)
    got = _value_and_grads(name)(q, k, v, q_ids, k_ids, dout)
    want = _value_and_grads("xla")(q, k, v, q_ids, k_ids, dout)
    for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
      assert np.isfinite(np.asarray(g)).all(), (kind, what)
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5,
                                 err_msg=f"{name} {kind} {what}")
    padding = np.asarray(args[0]) == 0
    np.testing.assert_array_equal(np.asarray(got[0])[padding], 0.0)
    np.testing.assert_array_equal(np.asarray(got[1])[padding], 0.0)


def test_decoding_chunk_over_cache_slots_and_bf16():
  """A 5-token chunk at slots 30..34 of 37 (empty slots after it), bf16 in, f32 accumulation."""
  v = vectors(("PIIPPAA" * 5) + "..", seg="1" * 35 + "00")
  v = {n: np.repeat(x, B, 0) for n, x in v.items()}
  q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  q_ids = attention.TokenIds(q_ids.segment[:, 30:35], q_ids.index[:, 30:35],
                             q_ids.group[:, :, 30:35])
  q, k, val, _ = _inputs(0, lq=5, dtype=jnp.bfloat16)
  want = np.asarray(attention._dense(q, k, val, q_ids, k_ids), np.float32)
  for name, fn in IMPLEMENTATIONS.items():
    got = jax.jit(fn)(q, k, val, q_ids, k_ids)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2, err_msg=name)


def test_decoder_with_blockwise_attention_matches_the_dense_path():
  """The LLM call site (scanned, rematerialised layers): same logits and gradients."""
  from mma_jax.models import configs, llm
  v = vectors("PIIIIPPPAAA.", seg="111111111110")
  ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  x = jax.random.normal(jax.random.key(1), (1, 12, 32))
  results, params = [], None
  for impl in ("xla", "blockwise"):
    cfg = configs.LLMConfig(vocab_size=8, hidden=32, layers=2, heads=2, kv_heads=1,
                            head_dim=16, mlp_dim=32, remat="full", attention=impl)
    model = llm.LLM(cfg)
    if params is None:  # the parameters do not depend on the implementation
      params = jax.jit(model.init)(jax.random.key(0), x, v["positions"], *ids)["params"]
    loss = lambda p, x: jnp.sum(model.apply({"params": p}, x, v["positions"], *ids)[0] ** 2)
    results.append(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x))
  (l0, g0), (l1, g1) = results
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g1, g0)
