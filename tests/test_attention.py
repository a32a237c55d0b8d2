"""The attention function on the compact ids."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import attention, masks
from tests.layouts import vectors


def test_matches_jax_reference_with_dense_mask_and_padding_rows_are_zero():
  v = vectors("PIIPPA..", seg="11111100")
  q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (1, 8, 4, 16))
  k = jax.random.normal(kk, (1, 8, 2, 16))
  val = jax.random.normal(kv, (1, 8, 2, 16))
  out = attention.attention(q, k, val, q_ids, k_ids)
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
