"""Building a run's model from shapes: init, shardings, restore targets, the config."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import config as config_lib
from mma_jax import sharding, tokens
from mma_jax.models import build, vlm
from tests.layouts import tiny_vlm_config


def test_init_from_shapes_equals_init_from_a_full_batch():
  """Parameters do not depend on the batch: the one-row dummy gives a full batch's values."""
  model = vlm.VLM(tiny_vlm_config())
  full = {k: jnp.zeros(s.shape, s.dtype) for k, s in
          tokens.abstract_batch(4, 96, 3, model.cfg.vision.image_size).items()}
  want = model.init(jax.random.key(7), full, "causal")["params"]
  got = build.init_fn(model, seed=7)()
  jax.tree_util.tree_map(np.testing.assert_array_equal, sharding.unbox(got), sharding.unbox(want))


def test_init_captures_no_host_batch():
  """The traced init holds no array constant bigger than a scalar table (no batch)."""
  model = vlm.VLM(tiny_vlm_config())
  closed = jax.make_jaxpr(build.init_fn(model))()
  assert all(np.size(c) <= 64 for c in closed.consts), [np.shape(c) for c in closed.consts]


def test_restore_target_carries_the_shardings():
  cfg = tiny_vlm_config()
  mesh = sharding.make_mesh((-1, 1, 1))
  target = build.restore_target(cfg, mesh, sharding.make_rules())
  shapes = sharding.unbox(build.abstract_params(cfg))
  assert jax.tree_util.tree_structure(target) == jax.tree_util.tree_structure(shapes)
  for t, s in zip(jax.tree_util.tree_leaves(target), jax.tree_util.tree_leaves(shapes)):
    assert t.shape == s.shape and t.dtype == s.dtype and t.sharding.mesh == mesh


def test_model_config_takes_the_tokenizer_vocabulary():
  c = config_lib.base_config()
  assert build.model_config(c, 58).llm.vocab_size == 58  # 0 = the tokenizer's
  c.model.llm.vocab_size = 40
  with pytest.raises(ValueError, match="config.model.llm.vocab_size=40 is smaller"):
    build.model_config(c, 58)
