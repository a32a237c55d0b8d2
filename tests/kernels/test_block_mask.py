"""Block skipping: a block is dropped only when fully masked, and it does get dropped."""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from mma_jax import attention, masks
from mma_jax.kernels import block_mask
from tests.layouts import vectors
from tests.test_masks import packed_rows

LENGTH, BQ, BK = 24, 4, 8


@jax.jit
def _live_and_lists(q_ids, k_ids):
  plan = block_mask.plan(q_ids, k_ids, BQ, BK)
  return block_mask.live_blocks(q_ids, k_ids, BQ, BK), plan


def _ids(row, kind):
  args = [jnp.asarray(x)[None] for x in row]
  qg, kg = masks.group_ids(*args, kind, num_modalities=3)
  pad = lambda g: jnp.pad(g, ((0, 0), (0, 2 - g.shape[1]), (0, 0)), constant_values=-1)
  index = jnp.arange(LENGTH)[None]
  return (attention.TokenIds(args[0], index, pad(qg)),
          attention.TokenIds(args[0], index, pad(kg)), args)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(row=packed_rows(length=LENGTH), kind=st.sampled_from(masks.KINDS))
def test_no_block_with_an_allowed_pair_is_skipped_and_lists_match(row, kind):
  q_ids, k_ids, args = _ids(row, kind)
  live, plan = jax.device_get(_live_and_lists(q_ids, k_ids))
  dense = np.asarray(masks.dense_mask(*args, kind))[0]
  needed = dense.reshape(LENGTH // BQ, BQ, LENGTH // BK, BK).any(axis=(1, 3))
  assert not np.any(needed & ~live[0]), "a block holding an allowed pair was marked dead"
  for lists, rows in ((plan.kv[0], live[0]), (plan.q[0], live[0].T)):
    for r, entry in zip(rows, lists):
      count, blocks = entry[0], entry[1:]
      assert count == r.sum()
      np.testing.assert_array_equal(blocks[:count], np.flatnonzero(r))
      if count:  # padding repeats the last live block (no new copy on TPU)
        assert np.all(blocks[count:] == blocks[count - 1])


def test_packed_examples_skip_cross_example_and_future_blocks():
  # Four examples of 6 tokens (image, image, question x2, answer x2), then 8 padding tokens.
  one = "IIPPAA"
  v = vectors(one * 4 + "." * 8, seg="111111222222333333444444" + "0" * 8)
  live = {}
  for kind in ("causal", "mma"):
    q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"],
                                       kind)
    live[kind] = np.asarray(block_mask.live_blocks(q_ids, k_ids, 4, 4))[0]
  dense = np.asarray(masks.dense_mask(v["segment_ids"], v["modality"], v["role"], v["turn"],
                                      "mma"))[0]
  needed = dense.reshape(8, 4, 8, 4).any(axis=(1, 3))
  np.testing.assert_array_equal(live["mma"], needed)  # exact on this layout
  assert live["causal"].sum() == 10 and live["mma"].sum() == 12  # of 64 block pairs
  assert not live["mma"][6:].any() and not live["mma"][:, 6:].any()  # padding: nothing
