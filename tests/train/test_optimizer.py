"""The optimizer: freezing, and per-group learning rates and weight decay by regex."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import config as config_lib
from mma_jax.train import optimizer

PARAMS = {"vision": {"q": {"kernel": jnp.ones((4, 2))}}, "connector": {"w": jnp.ones((3,))},
          "llm": {"layers": {"q": {"kernel": jnp.ones((2, 2))}}, "embed": jnp.ones((5,))}}


def first_update(**optim):
  c = config_lib.base_config().optim
  c.update(clip_norm=0.0, weight_decay=0.0, warmup_steps=1, **optim)
  opt, _ = optimizer.make(c, 10, PARAMS)
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.25), PARAMS)
  updates, _ = opt.update(grads, opt.init(PARAMS), PARAMS)
  return updates, optimizer.group_schedules(c, 10)


def test_each_group_steps_with_its_own_learning_rate():
  # Adam's first step moves every parameter by lr (m / sqrt(v) = 1 for a constant gradient).
  updates, schedules = first_update(
      freeze=("connector/.*",),
      groups=(("vision", "vision/.*", 1e-5, 0.0), ("embed", "llm/embed", 2e-4, 0.0)))
  assert set(schedules) == {"default", "vision", "embed"}
  np.testing.assert_allclose(updates["vision"]["q"]["kernel"], -schedules["vision"](0), rtol=1e-4)
  np.testing.assert_allclose(updates["llm"]["embed"], -schedules["embed"](0), rtol=1e-4)
  np.testing.assert_allclose(updates["llm"]["layers"]["q"]["kernel"], -schedules["default"](0),
                             rtol=1e-4)
  assert schedules["vision"](0) == pytest.approx(1e-5) and schedules["default"](0) == 3e-3
  np.testing.assert_array_equal(updates["connector"]["w"], 0.0)  # frozen beats any group


def test_group_weight_decay_reaches_its_parameters_only():
  plain, _ = first_update(freeze=(), groups=(("vision", "vision/.*", 1e-3, 0.0),))
  decayed, _ = first_update(freeze=(), groups=(("vision", "vision/.*", 1e-3, 0.5),))
  assert np.all(np.asarray(decayed["vision"]["q"]["kernel"]) <
                np.asarray(plain["vision"]["q"]["kernel"]))  # decoupled decay pulls further
  np.testing.assert_array_equal(decayed["llm"]["embed"], plain["llm"]["embed"])


@pytest.mark.parametrize("groups, match", [
    ((("vision", "vision/.*", 1e-5),), "give \\(name, regex, lr, weight_decay\\)"),
    ((("default", "vision/.*", 1e-5, 0.0),), "must be a new string"),
    ((("v", "vision/(", 1e-5, 0.0),), "bad regex"),
    ((("v", "vision/.*", 0.0, 0.0),), "lr must be positive"),
])
def test_bad_groups_name_the_key(groups, match):
  c = config_lib.base_config().optim
  c.groups = groups
  with pytest.raises(ValueError, match=r"config.optim.groups\[0\]=.*" + match):
    optimizer.groups(c)
