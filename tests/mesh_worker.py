"""Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices (XLA_FLAGS must be
set before jax is imported, and the rest of the suite runs with one device).

Two parts, run side by side: each initialises the tiny VLM directly sharded on one mesh and
trains it a few steps from those parameters on other meshes (part a: one device too); part b
saves a checkpoint on data=8 and restores it on fsdp=4 x tensor=2. Each prints one JSON object
with what it saw; the test asserts on them.
"""
import json
import sys
import tempfile

import grain
import jax
import numpy as np

from mma_jax import checkpoint, sharding
from mma_jax import config as config_lib
from mma_jax.models import build, vlm
from mma_jax.train import optimizer
from mma_jax.train import step as step_lib
from tests.layouts import tiny_vlm_config
from tests.train.test_loop import _rows

GRAD_ACCUM_2 = (2, 2, 2)  # this mesh also accumulates gradients over 2 micro-batches
STEPS = 3


def spec(x) -> list:
  return [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]


def run(model, batch, shape, devices=None, params=None):
  """Train STEPS steps (from `params` if given). Returns (losses, initial params as numpy,
  final state, mesh)."""
  mesh = sharding.make_mesh(shape, devices)
  rules = sharding.make_rules()
  opt_cfg = config_lib.base_config().optim
  opt_cfg.warmup_steps = 1
  with sharding.use(mesh, rules):
    abstract, _ = build.param_shardings(model.cfg, mesh, rules)
    opt, _ = optimizer.make(opt_cfg, 10, abstract)
    # eval_shape -> shardings -> jit(init, out_shardings): created sharded
    shardings = jax.tree_util.tree_map(lambda x: x.sharding,
                                       step_lib.abstract_state(model.cfg, opt, mesh, rules))
    if params is not None:
      params = jax.device_put(params, shardings.params)
    state = step_lib.init_state(model, opt, 0, shardings, mesh, rules, params)
    initial = jax.tree_util.tree_map(np.asarray, state.params)
    trainable = optimizer.trainable_mask(abstract, opt_cfg.freeze)
    step = step_lib.jit_train_step(model, opt, "mma", 2 if shape == GRAD_ACCUM_2 else 1,
                                   trainable, shardings, mesh)
    losses = []
    for _ in range(STEPS):
      state, metrics = step(state, sharding.put_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
  return losses, initial, state, mesh


def checksum(params) -> float:
  leaves = jax.tree_util.tree_leaves(params)
  return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in leaves))


def part_a(model, batch) -> dict:
  """Sharded init on (2, 2, 2) and the shardings it gave; the one-device reference; (2, 4, 1)."""
  out = {}
  out["(2, 2, 2)"], params, state, _ = run(model, batch, (2, 2, 2))
  out["init_checksum"] = checksum(params)
  out["reference"], _, _, _ = run(model, batch, (1, 1, 1), jax.devices()[:1], params=params)
  out["(2, 4, 1)"], _, _, _ = run(model, batch, (2, 4, 1), params=params)
  p = state.params
  adam = state.opt_state.inner_states["train"].inner_state[1][0]  # clip, then adamw's moments
  named = {"llm/layers/q/kernel": p["llm"]["layers"]["q"]["kernel"],
           "llm/layers/gate/kernel": p["llm"]["layers"]["gate"]["kernel"],
           "llm/layers/down/kernel": p["llm"]["layers"]["down"]["kernel"],
           "llm/embedder/embedding": p["llm"]["embedder"]["embedding"],
           "llm/lm_head/kernel": p["llm"]["lm_head"]["kernel"],
           "vision/layers/fc1/kernel": p["vision"]["layers"]["fc1"]["kernel"],
           "adam mu of llm/layers/q/kernel": adam.mu["llm"]["layers"]["q"]["kernel"]}
  out["specs"] = {k: spec(v) for k, v in named.items()}
  q = named["llm/layers/q/kernel"]
  out["q_shard_shape"] = [list(q.shape), list(q.addressable_shards[0].data.shape)]
  return out


def part_b(model, batch) -> dict:
  """Sharded init on (8, 1, 1); (1, 4, 2); a checkpoint saved on data=8 restored on
  fsdp=4 x tensor=2 (the restore target's layout)."""
  out = {}
  out["(8, 1, 1)"], params, saved, _ = run(model, batch, (8, 1, 1))
  out["init_checksum"] = checksum(params)
  out["(1, 4, 2)"], _, target, _ = run(model, batch, (1, 4, 2), params=params)
  with tempfile.TemporaryDirectory() as d:
    ckpt = checkpoint.Checkpointer(d, keep=1, async_save=False)
    data = grain.MapDataset.range(8).to_iter_dataset()
    ckpt.save(STEPS, saved.params, saved.opt_state, 0, iter(data))
    restored_params, restored_opt = ckpt.restore(STEPS, target.params, target.opt_state,
                                                 iter(data))
    ckpt.close()
  pairs = list(zip(jax.tree_util.tree_leaves((saved.params, saved.opt_state)),
                   jax.tree_util.tree_leaves((restored_params, restored_opt))))
  out["restore_max_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                for a, b in pairs)
  out["restore_layout_kept"] = all(
      r.sharding == t.sharding for r, t in zip(
          jax.tree_util.tree_leaves((restored_params, restored_opt)),
          jax.tree_util.tree_leaves((target.params, target.opt_state))))
  out["restored_q_spec"] = spec(restored_params["llm"]["layers"]["q"]["kernel"])
  return out


def main(part: str):
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  model = vlm.VLM(tiny_vlm_config(layers=1))
  out = {"a": part_a, "b": part_b}[part](model, _rows(True, 8))
  print(json.dumps(dict(out, devices=jax.device_count())))


if __name__ == "__main__":
  main(sys.argv[1])
