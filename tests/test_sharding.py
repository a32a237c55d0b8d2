"""Meshes, rules, sharded training, resharding checkpoints, FLOPs and memory estimates.

The 8-device checks run tests/mesh_worker.py in a subprocess: XLA_FLAGS must set the simulated
device count before jax is imported, and this process already imported it with one device.
"""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import config as config_lib
from mma_jax import sharding, tokens
from mma_jax.models import build, configs, flops, vlm
from mma_jax.train import memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mesh_run():
  """tests/mesh_worker.py's two parts, in parallel; their JSON merged."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0")  # faster compiles, same math
  procs = [subprocess.Popen([sys.executable, "-m", "tests.mesh_worker", part], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for part in "ab"]
  done = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, done):
    assert p.returncode == 0, err[-4000:]
  a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in done)
  # Both parts initialised on different meshes: the same values (the RNG ignores the layout).
  assert a.pop("init_checksum") == b.pop("init_checksum")
  return {**a, **b}


@pytest.mark.parametrize("shape", ["(8, 1, 1)", "(2, 4, 1)", "(2, 2, 2)", "(1, 4, 2)"])
def test_meshes_give_the_losses_of_one_device(mesh_run, shape):
  # (2, 2, 2) also accumulates gradients over 2 micro-batches.
  assert mesh_run["devices"] == 8
  np.testing.assert_allclose(mesh_run[shape], mesh_run["reference"], rtol=2e-6)
  assert mesh_run["reference"][-1] < mesh_run["reference"][0] - 1  # the steps did train


def test_parameters_are_created_sharded_as_the_rules_say(mesh_run):
  assert mesh_run["specs"] == {
      "llm/layers/q/kernel": [None, "fsdp", "tensor", None],   # layers, embed, heads, head_dim
      "llm/layers/gate/kernel": [None, "fsdp", "tensor"],      # layers, embed, mlp
      "llm/layers/down/kernel": [None, "tensor", "fsdp"],      # layers, mlp, embed
      "llm/embedder/embedding": ["tensor", "fsdp"],            # vocab, embed
      "llm/lm_head/kernel": ["fsdp", "tensor"],
      "vision/layers/fc1/kernel": [None, "fsdp", "tensor"],
      "adam mu of llm/layers/q/kernel": [None, "fsdp", "tensor", None]}
  (layers, embed, heads, head_dim), shard = mesh_run["q_shard_shape"]
  assert shard == [layers, embed // 2, heads // 2, head_dim]  # each device holds a quarter


def test_checkpoint_saved_on_data8_restores_on_fsdp4_tensor2(mesh_run):
  assert mesh_run["restore_max_diff"] == 0.0
  assert mesh_run["restore_layout_kept"]
  assert mesh_run["restored_q_spec"] == [None, "fsdp", "tensor", None]


# --- mesh shapes and rules, no devices needed --------------------------------------------------

def test_mesh_shape_takes_the_rest_and_names_bad_shapes():
  assert sharding.mesh_shape((-1, 2, 2), 16) == (4, 2, 2)
  assert sharding.mesh_shape((2, 8, 1), 16) == (2, 8, 1)
  for shape, match in [((-1, -1, 1), "at most one -1"), ((3, 2, 1), "needs 6 devices"),
                       ((-1, 3, 1), "not a multiple of 3"), ((8, 2), "give 3 sizes")]:
    with pytest.raises(ValueError, match=r"config\.mesh\.shape.*" + match):
      sharding.mesh_shape(shape, 16)


def test_rules_from_config_override_the_defaults():
  rules = dict(sharding.make_rules([("embed", None), ("mlp", ["fsdp", "tensor"])]))
  assert rules["embed"] is None and rules["mlp"] == ("fsdp", "tensor")
  assert rules["heads"] == "tensor"  # untouched
  with pytest.raises(ValueError, match=r"config\.mesh\.rules\[0\].*'model'"):
    sharding.make_rules([("embed", "model")])


def _params_on(shape, devices, cfg, rules=None):
  mesh = sharding.abstract_mesh(shape, devices)
  boxed = build.abstract_params(cfg)
  return mesh, boxed, sharding.logical_shardings(boxed, mesh, rules or sharding.make_rules())


def test_undivisible_dimensions_stay_unsharded():
  # kv_heads=1 cannot split over tensor=2; heads=4 can.
  cfg = configs.VLMConfig(llm=configs.LLMConfig(heads=4, kv_heads=1, head_dim=16))
  _, _, s = _params_on((1, 4, 2), 8, cfg)
  assert tuple(s["llm"]["layers"]["k"]["kernel"].spec) == (None, "fsdp", None, None)
  assert tuple(s["llm"]["layers"]["q"]["kernel"].spec) == (None, "fsdp", "tensor", None)


def test_per_device_bytes_follow_the_sharding():
  cfg = configs.VLMConfig()
  rules = sharding.make_rules([("vocab", None), ("heads", None), ("kv_heads", None),
                               ("mlp", None)])  # only embed -> fsdp
  _, boxed, s = _params_on((1, 8, 1), 8, cfg, rules)
  _, _, replicated = _params_on((8, 1, 1), 8, cfg, rules)
  params = sharding.unbox(boxed)
  full = sum(x.size * 4 for x in jax.tree_util.tree_leaves(params))
  assert memory.per_device(params, replicated) == full  # data parallel: everything everywhere
  # fsdp=8: every parameter with an embed dimension divisible by 8 holds an eighth.
  unsplit = sum(x.value.size * 4 for x in jax.tree_util.tree_leaves(
      boxed, is_leaf=lambda x: hasattr(x, "names"))
                if "embed" not in x.names or x.value.shape[x.names.index("embed")] % 8)
  assert memory.per_device(params, s) == unsplit + (full - unsplit) // 8


# --- FLOPs and memory against what XLA compiles ------------------------------------------------

def test_model_flops_match_xla():
  # One layer everywhere: XLA's cost analysis counts a scanned body once. The vision tower is
  # frozen (no backward) and so is the LLM, but the connector trains, so input gradients still
  # cross the LLM: every rule of flops.train_step is used.
  cfg = configs.VLMConfig(
      vision=configs.ViTConfig(image_size=32, patch_size=8, hidden=128, layers=1, heads=4,
                               mlp_dim=512),
      connector=configs.ConnectorConfig(kind="perceiver", depth=1, heads=4, dim_head=32,
                                        num_latents=8),
      llm=configs.LLMConfig(vocab_size=512, hidden=256, layers=1, heads=4, kv_heads=2,
                            head_dim=64, mlp_dim=1024))
  b, length, images, trains = 2, 128, 2, ("connector",)
  model = vlm.VLM(cfg)
  batch = {k: jnp.zeros((b, length), jnp.int32) for k in tokens.MODEL_KEYS if k != "images"}
  batch["images"] = jnp.zeros((b, images, 32, 32, 3))
  params = jax.eval_shape(lambda: sharding.unbox(model.init(jax.random.key(0), batch,
                                                            "causal")["params"]))

  def loss(trainable, frozen, batch):
    logits, _ = model.apply({"params": {**frozen, **trainable}}, batch, "causal")
    return jax.nn.logsumexp(logits, -1).sum()

  trainable = {k: v for k, v in params.items() if k in trains}
  frozen = {k: v for k, v in params.items() if k not in trains}
  xla = jax.jit(jax.grad(loss)).lower(trainable, frozen, batch).compile().cost_analysis()
  step = flops.train_step(cfg, b, length, images, {k: k in trains for k in flops.COMPONENTS})
  assert step <= xla["flops"] <= 1.03 * step  # XLA also counts the elementwise ops


def test_activation_estimate_is_near_xla_and_follows_remat():
  cfg = configs.VLMConfig(
      vision=configs.ViTConfig(image_size=16, hidden=64, layers=1, heads=2, mlp_dim=128),
      llm=configs.LLMConfig(vocab_size=1024, hidden=128, layers=4, heads=4, kv_heads=2,
                            head_dim=32, mlp_dim=512, remat="full"))
  b, length, images = 4, 128, 1
  optim = config_lib.base_config().optim
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  rules = sharding.make_rules()
  usage = memory.estimate(cfg, mesh, rules, optim, b, length, images)
  no_remat = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, remat="none"))
  assert usage.activations < memory.estimate(no_remat, mesh, rules, optim, b, length,
                                             images).activations
  two_way = memory.estimate(cfg, sharding.abstract_mesh((2, 1, 1), 2), rules, optim, b, length,
                            images)
  assert two_way.activations == pytest.approx(usage.activations / 2, rel=0.01)
  # XLA's temporaries of the compiled step hold the activations and the gradients.
  temp = memory.compiled(cfg, mesh, rules, optim, b, length, images).temp_size_in_bytes
  assert 0.6 < temp / (usage.activations + usage.gradients) < 1.5
