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
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from mma_jax import checkpoint as ckpt_lib
from mma_jax import config as config_lib
from mma_jax import benchmarks, distributed, evaluate, flops, memory, optimizer, sharding
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
    # Micro-batch k takes rows k, k + grad_accum, ...: every device keeps its own rows.
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:]).swapaxes(0, 1),
        batch)

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
    metrics = {"loss": total / count, "grad_norm": grad_norm, "loss_tokens": count,
               "tokens": jnp.sum(batch["segment_ids"] != 0)}
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


def _init_fn(model, seed: int):
  return lambda batch: model.init(jax.random.key(seed), {k: batch[k] for k in MODEL_KEYS},
                                  "causal")["params"]


def init_params(model, example_batch, mesh, rules, seed):
  """Sharded parameters: eval_shape -> logical shardings -> jit(init, out_shardings).

  Returns: (params, their shardings).
  """
  return sharding.sharded_init(functools.partial(_init_fn(model, seed), example_batch), mesh,
                               rules)


def param_shardings(model, example_batch, mesh, rules):
  """The parameters' shardings on `mesh`, from shapes alone (example_batch may be abstract)."""
  return sharding.logical_shardings(jax.eval_shape(_init_fn(model, 0), example_batch), mesh,
                                    rules)


def init_opt(opt, params, param_shardings, mesh):
  """Optimizer state created sharded like the parameters it mirrors (scalars replicated).

  Returns: (opt_state, its shardings).
  """
  shardings = sharding.like_params(jax.eval_shape(opt.init, params), params, param_shardings,
                                   mesh)
  return jax.jit(opt.init, out_shardings=shardings)(params), shardings


def state_shardings(param_shardings, opt_shardings, mesh) -> TrainState:
  return TrainState(sharding.replicated(mesh), param_shardings, opt_shardings)


def jit_train_step(model, opt, kind: str, grad_accum: int, trainable, shardings: TrainState,
                   mesh):
  """The jitted step with its layout fixed: state as `shardings`, batch over data x fsdp,
  metrics replicated; the old state's buffers are reused (donated)."""
  return jax.jit(make_train_step(model, opt, kind, grad_accum, trainable),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def _report_memory(config, model_cfg, mesh, rules, params, param_shardings, opt_state,
                   opt_shardings, trainable, compiled):
  """Log bytes per device: the estimate (mma_jax.memory) and what XLA compiled."""
  t, d = config.train, config.data
  acts = memory.activations(model_cfg, mesh, rules, t.batch_size // t.grad_accum,
                            d.pack_length, d.max_images,
                            memory.trainable_components(params, config.optim.freeze))
  usage = memory.usage(params, param_shardings, opt_state, opt_shardings, trainable,
                       t.grad_accum, acts)
  stats = jax.local_devices()[0].memory_stats() or {}
  logging.info("Memory estimate: %s", memory.format_usage(usage, stats.get("bytes_limit")))
  analysis = compiled.memory_analysis() if compiled is not None else None
  if analysis is not None:
    logging.info("Compiled train step per device: arguments %s, temporaries %s.",
                 memory.human(analysis.argument_size_in_bytes),
                 memory.human(analysis.temp_size_in_bytes))


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
  rules = sharding.make_rules(config.mesh.rules)
  sharding.check_batch(config.train.batch_size, config.train.grad_accum, mesh)
  logging.info("Mesh %s over %d devices in %d processes.", dict(mesh.shape), mesh.size,
               jax.process_count())
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep,
                               config.train.async_checkpoint)
  with sharding.use(mesh, rules):
    params, param_shardings = init_params(
        model, data.example_batch(model_cfg.tokens_per_image), mesh, rules, config.seed)
    opt, lr_schedule = optimizer.make(config.optim, total_steps, params)
    opt_state, opt_shardings = init_opt(opt, params, param_shardings, mesh)
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

    shardings = state_shardings(param_shardings, opt_shardings, mesh)
    state = jax.device_put(TrainState(jnp.int32(start), params, opt_state), shardings)
    train_step = jit_train_step(model, opt, kind, config.train.grad_accum, trainable, shardings,
                                mesh)
    step_flops = flops.train_step(model_cfg, config.train.batch_size, config.data.pack_length,
                                  config.data.max_images,
                                  memory.trainable_components(params, config.optim.freeze))
    peak = config.train.peak_flops or flops.peak_flops(jax.devices()[0].device_kind)
    logging.info("Model FLOPs per step: %.3g; peak per device: %s FLOP/s.", step_flops, peak)
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    step, last_metrics, t0, token_counts, steps_timed = start, None, time.time(), [], 0
    stopped, stopping, vote = False, False, None
    multi_process = jax.process_count() > 1
    with _StopFlag() as stop:
      while step < total_steps:
        if step == (phase + 1) * steps_per_phase:  # DOT: the second order starts fresh
          phase += 1
          _close(iterator)
          iterator = data.train_iterator(phases[phase], model_cfg.tokens_per_image)
        batch = sharding.put_batch(next(iterator), mesh)
        if step == start:  # compiled here (the call reuses it) to report what it really needs
          _report_memory(config, model_cfg, mesh, rules, params, param_shardings, opt_state,
                         opt_shardings, trainable, train_step.lower(state, batch).compile())
          t0 = time.time()
        state, last_metrics = train_step(state, batch)
        token_counts.append(last_metrics["tokens"])
        step += 1
        steps_timed += 1
        if multi_process:  # all processes stop at the same step, one step after any asks
          stopping = vote is not None and bool(vote)
          vote = distributed.any_process(stop.requested, mesh)
        else:
          stopping = stop.requested
        report(step)
        if step % config.train.log_every == 0 or step == total_steps:
          m = jax.device_get(last_metrics)
          _check_finite(m, step, ckpt)
          dt = time.time() - t0
          scalars = {"loss": m["loss"], "grad_norm": m["grad_norm"],
                     "learning_rate": lr_schedule(step),
                     "tokens_per_s": float(np.sum(jax.device_get(token_counts))) / dt,
                     "step_time": dt / steps_timed}
          if peak:  # model FLOPs over what the devices could have done meanwhile
            scalars["mfu"] = step_flops * steps_timed / dt / (peak * jax.device_count())
          writer.write_scalars(step, scalars)
          if jax.process_index() == 0:
            with open(os.path.join(workdir, "train_log.jsonl"), "a") as f:
              f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}})
                      + "\n")
          t0, token_counts, steps_timed = time.time(), [], 0
        if (step % config.train.checkpoint_every == 0 or step == total_steps or stopping
            or step == (phase + 1) * steps_per_phase):
          _check_finite(jax.device_get(last_metrics), step, ckpt)  # never save a NaN state
          ckpt.save(step, state.params, state.opt_state, phase, iterator)
        if config.train.eval_every and step % config.train.eval_every == 0:
          metrics, _ = _evaluate(model, state.params, data, "validation", config)
          writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
        if stopping:
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
    metrics, results = _evaluate(model, state.params, data, "test", config,
                                 os.path.join(workdir, "eval"))
  writer.write_scalars(step, {f"test/{k}": v for k, v in metrics.items()})
  writer.flush()
  own = evaluate.own_benchmark(data).name
  if jax.process_index() == 0:  # every process computed the same metrics
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"step": step, "metrics": metrics, "examples": results.get(own, {}).get("examples", []),
                 "benchmarks": {n: r for n, r in results.items() if n != own}}, f, indent=1)
  logging.info("Test metrics at step %d:\n%s", step, format_metrics(metrics))
  for name, r in results.items():
    if name != own:
      logging.info("Benchmark at step %d:\n%s", step, evaluate.format_results(r))
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


def _evaluate(model, params, data, split, config, out: str = ""):
  """The Task's own split, then each of config.eval.benchmarks, through evaluate.run_benchmark
  (the evaluate CLI's path). Returns (metrics: the split's, plus '<bench>/<metric>' for each
  benchmark; results per benchmark name). PT runs are not evaluated."""
  if config.stage == "pt":
    return {}, {}
  own = evaluate.own_benchmark(data).name
  results = {own: evaluate.run_benchmark(model, {"params": params}, data, config, own,
                                         split=split, out=out)}
  metrics = dict(results[own]["metrics"])
  for name, path in benchmarks.parse_list(config.eval.benchmarks):
    results[name] = evaluate.run_benchmark(model, {"params": params}, data, config, name, path,
                                           out=out)
    metrics.update({f"{name}/{k}": v for k, v in results[name]["metrics"].items()})
  return metrics, results


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
