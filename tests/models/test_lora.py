"""LoRA: adapters start as the base model exactly, only they train, and merged they are the
same function without adapters."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mma_jax import config as config_lib
from mma_jax import sharding, tokens
from mma_jax.models import configs, lora, vlm
from mma_jax.train import optimizer
from mma_jax.train import step as step_lib
from tests.layouts import model_batch, tiny_vlm_config

LAYOUT = "P" + "I" * 4 + "PPPAA"


def adapted(cfg, rank=4, vision=()):
  with_lora = lambda c, targets: dataclasses.replace(
      c, lora=configs.LoRAConfig(rank=rank, alpha=8.0, targets=targets))
  return dataclasses.replace(cfg, llm=with_lora(cfg.llm, ("layers/(q|k|v|o|gate|up|down)",)),
                             vision=with_lora(cfg.vision, vision))


def test_adapters_start_as_the_base_model_exactly():
  """A base checkpoint + fresh adapters (what build.initial_params makes of config.init_from)
  computes exactly what the base model computes: B starts at zero."""
  base_cfg = tiny_vlm_config()
  batch = model_batch(LAYOUT)
  base, ours = vlm.VLM(base_cfg), vlm.VLM(adapted(base_cfg, vision=("layers/(q|fc1)",)))
  p_base = sharding.unbox(base.init(jax.random.key(3), batch, "mma"))["params"]
  fresh = sharding.unbox(ours.init(jax.random.key(4), batch, "mma"))["params"]
  base_part, adapters = lora.split(fresh)
  assert jax.tree_util.tree_structure(base_part) == jax.tree_util.tree_structure(p_base)
  assert "lora_a" in adapters["vision"]["layers"]["q"] and "k" not in adapters["vision"]["layers"]
  p_ours = lora.combine(p_base, adapters)
  assert lora.has_adapters(p_ours) and lora.combine(*lora.split(p_ours)) == p_ours
  np.testing.assert_array_equal(ours.apply({"params": p_ours}, batch, "mma")[0],
                                base.apply({"params": p_base}, batch, "mma")[0])


def test_merged_adapters_are_the_same_function():
  cfg = adapted(tiny_vlm_config(), vision=("layers/o",))
  model, batch = vlm.VLM(cfg), model_batch(LAYOUT)
  params = sharding.unbox(model.init(jax.random.key(0), batch, "mma"))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(  # trained-looking adapters: B != 0
      lambda path, x: jnp.asarray(rng.normal(size=x.shape) * 0.1, x.dtype)
      if optimizer.param_path(path).endswith("lora_b") else x, params)
  want = model.apply({"params": params}, batch, "mma")[0]
  merged = lora.merge(params, cfg)
  assert not lora.has_adapters(merged)
  got = vlm.VLM(tiny_vlm_config()).apply({"params": merged}, batch, "mma")[0]
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.abs(np.asarray(want) - np.asarray(
      vlm.VLM(tiny_vlm_config()).apply({"params": lora.merge_tree(params, 0.0)}, batch,
                                       "mma")[0])).max() > 1e-3  # the adapters matter


def test_only_the_adapters_train():
  cfg = adapted(tiny_vlm_config())
  model = vlm.VLM(cfg)
  batch = model_batch(LAYOUT)
  batch = dict(batch, targets=batch["tokens"], loss_mask=batch["role"] == tokens.RESPONSE)
  params = sharding.unbox(model.init(jax.random.key(0), batch, "mma"))["params"]
  optim = config_lib.base_config().optim
  optim.freeze = ()  # adapters alone train even without a freeze list
  opt, _ = optimizer.make(optim, 10, params)
  trainable = optimizer.trainable_mask(params, optim.freeze)
  for path, t in jax.tree_util.tree_flatten_with_path(trainable)[0]:
    assert t == bool(optimizer.ADAPTER.fullmatch(optimizer.param_path(path)))
  state = step_lib.TrainState(jnp.int32(0), params, opt.init(params))
  step = jax.jit(step_lib.make_train_step(model, opt, "mma", 1, trainable))
  for _ in range(2):  # B moves at step 1, then A too
    state, _ = step(state, batch)
  for path, before in jax.tree_util.tree_flatten_with_path(params)[0]:
    after = state.params
    for k in path:
      after = after[k.key]
    moved = not np.array_equal(np.asarray(before), np.asarray(after))
    assert moved == bool(optimizer.ADAPTER.fullmatch(optimizer.param_path(path))), path
