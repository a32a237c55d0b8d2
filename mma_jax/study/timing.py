"""Step time, timed alone: each variant's train step run by itself after training, on one batch
already on the device; the minimum over intervals, kept in workdir/timing.json."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from typing import Sequence

import numpy as np
from absl import logging

from mma_jax import tokens
from mma_jax.study.planning import Run
from mma_jax.study.statistics import TIMED


def _timing_key(config) -> str:
  """What the step time depends on: the run config less what differs between seeds and step
  budgets, the device and the JAX version."""
  import jax  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(config)
  c.seed = c.data.shuffle_seed = 0
  c.train.steps, c.init_from = 1, ""
  text = json.dumps([c.to_json_best_effort(sort_keys=True), jax.devices()[0].device_kind,
                     jax.device_count(), jax.__version__])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def time_train_step(config, workdir: str, seconds: float) -> dict:
  """Seconds per train step of `config`'s model, mask and batch, measured in this process.

  The step is jit_train_step as the trainer builds it, from fresh parameters (the time does not
  depend on their values) on one batch of the run's last phase put on the device once. After a
  compile-and-warm-up call, intervals of k steps (k: about a tenth of `seconds` each) run until
  `seconds` have passed, at least 3; the result is the minimum over intervals of the interval's
  time / k, since anything else running can only add time.
  """
  # pylint: disable=g-import-not-at-top (TensorFlow is slow to import; reports need none)
  import jax
  from mma_jax import sharding
  from mma_jax.data import task as task_lib
  from mma_jax.models import build, vlm
  from mma_jax.train import optimizer
  from mma_jax.train import step as step_lib
  c = config
  task = task_lib.Task(c, workdir)
  model_cfg = build.model_config(c, task.tokenizer.vocab_size)
  model = vlm.VLM(model_cfg)
  mesh, rules = sharding.make_mesh(c.mesh.shape), sharding.make_rules(c.mesh.rules)
  phases = tokens.phases(c.data.order)
  with sharding.use(mesh, rules):
    abstract = build.param_shardings(model_cfg, mesh, rules)[0]
    opt, _ = optimizer.make(c.optim, c.train.steps * len(phases), abstract)
    trainable = optimizer.trainable_mask(abstract, c.optim.freeze)
    shardings = jax.tree_util.tree_map(
        lambda x: x.sharding, step_lib.abstract_state(model_cfg, opt, mesh, rules))
    state = step_lib.init_state(model, opt, c.seed, shardings, mesh, rules)
    train_step = step_lib.jit_train_step(model, opt, c.mask, c.train.grad_accum, trainable,
                                         shardings, mesh)
    iterator = task.train_iterator(phases[-1], model_cfg.tokens_per_image)
    try:
      batch = sharding.put_batch(next(iterator), mesh)
    finally:
      getattr(iterator, "close", lambda: None)()  # no prefetch thread outlives the timing

    def interval(k: int) -> float:
      nonlocal state
      t0 = time.perf_counter()
      for _ in range(k):
        state, _ = train_step(state, batch)  # the state is donated: carry it on
      jax.block_until_ready(state)
      return (time.perf_counter() - t0) / k

    interval(1)  # compiles
    k = max(1, int(seconds / 10 / interval(1)))
    times, end = [], time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
      times.append(interval(k))
  return {"source": TIMED, "seconds_per_step": float(np.min(times)),
          "median_seconds_per_step": float(np.median(times)), "steps_per_interval": k,
          "intervals": len(times)}


def time_variants(workdir: str, runs: Sequence[Run], seconds: float) -> dict[str, dict]:
  """variant -> time_train_step of its first run, one variant after another; reused from
  workdir/timing.json when timed before for the same config, device and JAX version."""
  path = os.path.join(workdir, "timing.json")
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = json.load(f)
  out = {}
  for run in runs:
    if not run.variant or run.variant in out:
      continue
    key = _timing_key(run.config)
    if cache.get(run.variant, {}).get("key") != key:
      logging.info("Study: timing the %s train step alone (%.1f s).", run.variant, seconds)
      cache[run.variant] = dict(time_train_step(run.config, run.workdir, seconds), key=key)
      with open(path, "w") as f:
        json.dump(cache, f, indent=1)
    out[run.variant] = {k: v for k, v in cache[run.variant].items() if k != "key"}
  return out

