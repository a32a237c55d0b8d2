"""tokamax's path: one key order in which every mask row is a key range, checked against the
dense mask (any kind, packed, multi-image, multi-turn, either order), and the whole
permute -> ranged attention -> unpermute path against dense attention: through tokamax's own
API where it is installed (Python >= 3.12: its "xla" implementation takes the same
Mask(k_start, k_end) as its Mosaic GPU kernel, and runs on the CPU), else with a reference
kernel; and the Mosaic GPU op reached through the installed version's own registry."""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import attention, masks
from mma_jax.kernels import block_mask, tokamax_gpu
from tests.layouts import vectors
from tests.test_masks import packed_rows


def _ids(seg, mod, role, turn, kind):
  args = [jnp.asarray(x)[None] if np.ndim(x) == 1 else jnp.asarray(x) for x in
          (seg, mod, role, turn)]
  return args, attention.token_ids(*args, kind)


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(row=packed_rows(length=40), kind=st.sampled_from(masks.KINDS))
def test_every_row_is_one_key_range_in_the_new_order(row, kind):
  seg, mod, role, turn = row
  mod = np.minimum(mod, 1)  # text + one other modality: one group channel
  args, (q_ids, k_ids) = _ids(seg, mod, role, turn, kind)
  layout = tokamax_gpu.interval_layout(q_ids, k_ids)
  perm, k_start, k_end, exact = layout.perm, layout.k_start, layout.k_end, layout.exact
  np.testing.assert_array_equal(np.argsort(np.asarray(perm), axis=1), layout.slot)
  perm, k_start, k_end = (np.asarray(x)[0] for x in (perm, k_start, k_end))
  assert sorted(perm.tolist()) == list(range(len(seg)))  # a permutation
  dense = np.asarray(masks.dense_mask(*args, kind))[0][perm][:, perm]
  ranges = np.asarray(tokamax_gpu.range_mask(k_start, k_end, len(seg)))
  real = seg[perm] != 0
  # exact says whether the ranges are the mask: always for the deployable kinds; for
  # mma_conversation only when no answer lies between two questions an image sees
  assert bool(exact) == np.array_equal(ranges[real], dense[real])
  assert bool(exact) or kind == "mma_conversation"
  # padding rows attend to themselves only (zeroed afterwards): never an empty range
  np.testing.assert_array_equal(ranges[~real], np.eye(len(seg), dtype=bool)[~real])


def _reference(q, k, v, k_start, k_end, scale):
  del scale  # dot_product_attention scales by D ** -0.5 too
  return attention.dot_product_attention(q, k, v,
                                         tokamax_gpu.range_mask(k_start, k_end, q.shape[1]))


needs_tokamax = pytest.mark.skipif(not tokamax_gpu.installed(),
                                   reason="tokamax is not installed (Python >= 3.12 only)")
KERNELS = [pytest.param("xla", marks=needs_tokamax, id="tokamax-xla"),
           pytest.param(_reference, id="reference")]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", masks.KINDS)  # mma_conversation: not ranges, the fallback runs
def test_attention_and_gradients_equal_the_dense_path(kind, kernel):
  # two packed examples (two images before the question; question before the image, two
  # turns) and padding
  layout = "PIIIIPPPAAA" + "PPIIPAAPIPA" + "..."
  v = vectors(layout, seg="1" * 11 + "2" * 11 + "000", turn="0" * 11 + "0" * 7 + "1" * 4 + "000")
  v = {n: jnp.repeat(x, 2, axis=0) for n, x in v.items()}
  q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], kind)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 25, 4, 8)), jnp.float32)
  k, val = (jnp.asarray(rng.normal(size=(2, 25, 2, 8)), jnp.float32) for _ in range(2))

  def loss(fn, q, k, val):
    out = fn(q, k, val)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

  # As the model calls it: key order and the fallback's plans prepared once, outside.
  prepared = tokamax_gpu.prepare(q_ids, k_ids, 8, fallback=attention.blockwise.prepare)
  ours = lambda q, k, val: tokamax_gpu.attention(q, k, val, q_ids, k_ids, kernel,
                                                 fallback=attention.blockwise.attention,
                                                 prepared=prepared)
  dense = lambda q, k, val: attention.attention(q, k, val, q_ids, k_ids, "xla")
  (_, out), grads = jax.value_and_grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2),
                                       has_aux=True)(q, k, val)
  (_, want), want_grads = jax.value_and_grad(lambda *a: loss(dense, *a), argnums=(0, 1, 2),
                                             has_aux=True)(q, k, val)
  exact = tokamax_gpu.interval_layout(q_ids, k_ids).exact
  assert bool(exact) == (kind != "mma_conversation")  # its images see turn 1's question
  np.testing.assert_allclose(out, want, atol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, atol=1e-5)


@needs_tokamax
def test_the_mosaic_gpu_op_is_reached_through_the_installed_registry():
  # 55e6723 looked up "mosaic", an alias of the public API that the registry does not hold:
  # every GPU call raised KeyError.
  from tokamax._src.ops.attention import api, pallas_mosaic_gpu  # pylint: disable=g-import-not-at-top
  got = tokamax_gpu.op()
  assert got is api.IMPLEMENTATIONS[tokamax_gpu.MOSAIC_GPU]
  assert isinstance(got, pallas_mosaic_gpu.PallasMosaicGpuFlashAttention)
  with pytest.raises(LookupError, match=f"tokamax {tokamax_gpu.version()} .*'xla'"):
    tokamax_gpu.op("no_such_kernel")


def test_three_modalities_and_a_missing_tokamax_are_clear_errors():
  v = vectors("PIPA")
  ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  q = jnp.zeros((1, 4, 2, 8))
  if not tokamax_gpu.installed():
    with pytest.raises(ImportError, match="mma-jax\\[tokamax\\]"):
      tokamax_gpu.attention(q, q, q, *ids)
    assert "not installed" in attention.unavailable("tokamax")
  qg, kg = masks.group_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma",
                           num_modalities=3)
  index = jnp.arange(4)[None]
  q_ids = block_mask.TokenIds(jnp.asarray(v["segment_ids"]), index, qg)
  k_ids = block_mask.TokenIds(jnp.asarray(v["segment_ids"]), index, kg)
  with pytest.raises(NotImplementedError, match="one group channel"):
    tokamax_gpu.interval_layout(q_ids, k_ids)
