"""train_and_evaluate(config, workdir): PT or SFT of the VLM, resumable, then evaluation.

A batch goes: Grain iterator (numpy dict, see mma_jax.data.pipeline) -> put_batch (sharded
jax arrays) -> train_step: VLM logits with config.mask -> next-token loss on response tokens.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from mma_jax import checkpoint as ckpt_lib
from mma_jax import config as config_lib
from mma_jax import evaluate, optimizer, sharding
from mma_jax import task
from mma_jax.models import configs as model_configs
from mma_jax.models import vlm


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def token_loss(logits, targets, loss_mask):
  """Summed next-token NLL over loss_mask and the token count.

  Args: logits f32[B, L, V]; targets i32[B, L]; loss_mask bool[B, L].
  Returns: (sum f32[], count f32[]).
  """
  nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
      logits, targets[..., None], axis=-1)[..., 0]
  mask = loss_mask.astype(jnp.float32)
  return jnp.sum(nll * mask), jnp.sum(mask)


MODEL_KEYS = ("tokens", "segment_ids", "modality", "role", "turn", "positions", "images")


def make_train_step(model: vlm.VLM, opt: optax.GradientTransformation, kind: str,
                    grad_accum: int, trainable):
  """jit-able (state, batch) -> (state, metrics); the loss averages over all response tokens
  of the step, whether they come in one batch or in grad_accum micro-batches."""

  def loss_sum(params, batch):
    logits, _ = model.apply({"params": params}, {k: batch[k] for k in MODEL_KEYS}, kind)
    return token_loss(logits, batch["targets"], batch["loss_mask"])

  def step(state: TrainState, batch):
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch)

    def accumulate(carry, mb):
      grads, total, count = carry
      (s, n), g = jax.value_and_grad(loss_sum, has_aux=True)(state.params, mb)
      return (jax.tree_util.tree_map(jnp.add, grads, g), total + s, count + n), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    (grads, total, count), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), micro)
    count = jnp.maximum(count, 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / count, grads)
    # Frozen parameters' gradients are never read, so XLA drops their computation.
    grad_norm = optax.global_norm([g for g, t in zip(jax.tree_util.tree_leaves(grads),
                                                     jax.tree_util.tree_leaves(trainable)) if t])
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": total / count, "grad_norm": grad_norm, "loss_tokens": count}
    return TrainState(state.step + 1, params, opt_state), metrics

  return step


class _StopFlag:
  """Set by SIGTERM: the loop saves a checkpoint and returns."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint before exiting.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _model_config(config, vocab_size: int) -> model_configs.VLMConfig:
  model = config.model.to_dict()
  if not model["llm"].get("vocab_size"):
    model["llm"]["vocab_size"] = vocab_size
  elif model["llm"]["vocab_size"] < vocab_size:
    raise ValueError(f"config.model.llm.vocab_size={model['llm']['vocab_size']} is smaller than "
                     f"the tokenizer's {vocab_size}; use 0 to take the tokenizer's size.")
  return model_configs.vlm_config_from_dict(model)


def _init(model, example_batch, mesh, rules, seed):
  """Sharded parameters: eval_shape -> logical shardings -> jit(init, out_shardings)."""
  batch = {k: example_batch[k] for k in MODEL_KEYS}

  def init():
    return model.init(jax.random.key(seed), batch, "causal")["params"]

  abstract = jax.eval_shape(init)
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  params = jax.jit(lambda: nn.meta.unbox(init()), out_shardings=shardings)()
  return params


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Train per config (resuming from workdir if it holds a checkpoint), then evaluate on test.

  Returns the final test metrics (also written to workdir/results.json).
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  data = task.Task(config, workdir)
  model_cfg = _model_config(config, data.tokenizer.vocab_size)
  model = vlm.VLM(model_cfg)
  kind = config.mask
  phases = ["T&I", "I&T"] if config.data.order == "DOT" else [config.data.order]
  steps_per_phase = config.train.steps
  total_steps = steps_per_phase * len(phases)

  mesh = sharding.make_mesh(config.mesh.shape)
  rules = sharding.DEFAULT_RULES
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep,
                               config.train.async_checkpoint)
  with mesh, nn.logical_axis_rules(rules):
    params = _init(model, data.example_batch(model_cfg.tokens_per_image), mesh, rules,
                   config.seed)
    opt, lr_schedule = optimizer.make(config.optim, total_steps, params)
    opt_state = jax.jit(opt.init)(params)
    trainable = optimizer.trainable_mask(params, config.optim.freeze)
    n_train = sum(int(np.prod(p.shape)) for p, t in zip(jax.tree_util.tree_leaves(params),
                                                       jax.tree_util.tree_leaves(trainable)) if t)
    logging.info("Model: %s; trainable parameters: %d", model_cfg, n_train)

    start, phase = 0, 0
    latest = ckpt.latest_step()
    if latest is not None:
      phase = ckpt.restore_meta(latest)["phase"]
      iterator = data.train_iterator(phases[phase], model_cfg.tokens_per_image)
      params, opt_state = ckpt.restore(latest, params, opt_state, iterator)
      start = latest
      logging.info("Resuming from %s at step %d (phase %s).", ckpt.directory, start,
                   phases[phase])
    else:
      iterator = data.train_iterator(phases[phase], model_cfg.tokens_per_image)
      if config.init_from:
        params, pt_step = ckpt_lib.load_params(config.init_from, params)
        logging.info("Initialised from %s (step %s).", config.init_from, pt_step)
      elif config.stage == "sft":
        logging.warning("No PT checkpoint given (config.init_from is empty): SFT trains the "
                        "connector and LLM from scratch.")

    state = TrainState(jnp.int32(start), params, opt_state)
    train_step = jax.jit(make_train_step(model, opt, kind, config.train.grad_accum, trainable),
                         donate_argnums=0)
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    step, last_metrics, t0, tokens_seen = start, None, time.time(), 0
    stopped = False
    with _StopFlag() as stop:
      while step < total_steps:
        if step == (phase + 1) * steps_per_phase:  # DOT: the second order starts fresh
          phase += 1
          _close(iterator)
          iterator = data.train_iterator(phases[phase], model_cfg.tokens_per_image)
        batch = next(iterator)
        tokens_seen += int(np.sum(batch["segment_ids"] != 0))
        state, last_metrics = train_step(state, sharding.put_batch(batch, mesh))
        step += 1
        report(step)
        if step % config.train.log_every == 0 or step == total_steps:
          m = jax.device_get(last_metrics)
          _check_finite(m, step, ckpt)
          dt = time.time() - t0
          scalars = {"loss": m["loss"], "grad_norm": m["grad_norm"],
                     "learning_rate": lr_schedule(step), "tokens_per_s": tokens_seen / dt}
          if config.train.peak_flops:
            scalars["mfu"] = 6 * n_train * tokens_seen / dt / (
                config.train.peak_flops * jax.device_count())
          writer.write_scalars(step, scalars)
          with open(os.path.join(workdir, "train_log.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
          t0, tokens_seen = time.time(), 0
        if (step % config.train.checkpoint_every == 0 or step == total_steps or stop.requested
            or step == (phase + 1) * steps_per_phase):
          _check_finite(jax.device_get(last_metrics), step, ckpt)  # never save a NaN state
          ckpt.save(step, state.params, state.opt_state, phase, iterator)
        if config.train.eval_every and step % config.train.eval_every == 0:
          metrics, _ = _evaluate(model, state.params, data, "validation", config, model_cfg)
          writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
        if stop.requested:
          stopped = True
          break
    ckpt.close()
    _close(iterator)
    if data.skips.count:
      logging.warning("%d bad training records were skipped (config.data.skip_bad_records).",
                      data.skips.count)
    if stopped:
      logging.warning("Stopped by SIGTERM at step %d; checkpoint saved in %s.", step,
                      ckpt.directory)
      writer.flush()
      return {}
    metrics, predictions = _evaluate(model, state.params, data, "test", config, model_cfg)
  writer.write_scalars(step, {f"test/{k}": v for k, v in metrics.items()})
  writer.flush()
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"step": step, "metrics": metrics, "examples": predictions[:20]}, f, indent=1)
  logging.info("Test metrics at step %d:\n%s", step, format_metrics(metrics))
  return metrics


def _close(iterator):
  """Stop a prefetching iterator's thread so it does not outlive the run."""
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


def _check_finite(metrics, step, ckpt):
  if not np.isfinite(metrics["loss"]):
    last = ckpt.latest_step()
    raise FloatingPointError(
        f"Loss is {metrics['loss']} at step {step}: training stopped. The last good checkpoint "
        f"is step {last} in {ckpt.directory}. Lower config.optim.lr or raise "
        "config.optim.warmup_steps, then restart in the same workdir to resume from it.")


def _evaluate(model, params, data, split, config, model_cfg):
  if config.stage == "pt":
    return {}, []
  batches, chance = data.eval_data(split, model_cfg.tokens_per_image)
  return evaluate.evaluate(model, {"params": params}, batches, data.tokenizer, config.mask,
                           config.eval.max_new_tokens, chance)


def format_metrics(metrics: dict[str, float]) -> str:
  """One line per question type: accuracy vs chance."""
  types = sorted(k.split("/", 1)[1] for k in metrics if k.startswith("accuracy/"))
  lines = []
  for t in types:
    line = f"  {t:<10} accuracy {metrics[f'accuracy/{t}']:.3f}"
    if f"chance/{t}" in metrics:
      line += f"  (chance {metrics[f'chance/{t}']:.3f})"
    if t == "exist" and "f1/exist" in metrics:
      line += f"  F1 {metrics['f1/exist']:.3f}"
    lines.append(line)
  return "\n".join(lines)
