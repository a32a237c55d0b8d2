"""train_and_evaluate(config, workdir): PT or SFT of the VLM, resumable, then evaluation.

A batch goes: Task.train_iterator (Grain; numpy rows, mma_jax.data.pipeline) -> put_batch
(sharded jax arrays) -> the train step (mma_jax.train.step): VLM logits with config.mask ->
next-token loss on response tokens. The Trainer below strings the named pieces together:
phases (DOT trains T&I, then I&T), a stop request (SIGTERM, agreed between processes),
the metrics log, checkpoints (state + data iterator), NaN checks and evaluation.
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from mma_jax import checkpoint as ckpt_lib
from mma_jax import config as config_lib
from mma_jax import distributed, sharding, tokens
from mma_jax.data import chat
from mma_jax.data import task as task_lib
from mma_jax.evaluate import runner, scoring
from mma_jax.models import build, flops, lora, vlm
from mma_jax.train import memory, optimizer
from mma_jax.train import step as step_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Train per config (resuming from workdir if it holds a checkpoint), then evaluate on test.

  Returns the final test metrics (also written to workdir/results.json); {} when stopped by
  SIGTERM (a checkpoint is saved; the same call resumes).
  """
  return Trainer(config, workdir).run()


class StopRequest:
  """SIGTERM asks the loop to save a checkpoint and return.

  With several processes, all stop at the same step, one step after any of them was asked:
  the vote is read a step late, so it never stalls the pipeline.
  """

  def __init__(self, mesh):
    self.requested = False
    self._mesh, self._vote, self._previous = mesh, None, None

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

  def after_step(self) -> bool:
    """Whether the loop stops after this step."""
    if jax.process_count() == 1:
      return self.requested
    stopping = self._vote is not None and bool(self._vote)
    self._vote = distributed.any_process(self.requested, self._mesh)
    return stopping


class MetricsLog:
  """Every config.train.log_every steps: loss, grad norm, learning rate (per parameter group
  when config.optim.groups has any), tokens/s, step time and MFU, to the metric writer
  (TensorBoard + a log line) and to workdir/train_log.jsonl."""

  def __init__(self, workdir: str, writer, schedules, step_flops: float, peak: float):
    """schedules: parameter group -> lr schedule (optimizer.group_schedules)."""
    self.path = os.path.join(workdir, "train_log.jsonl")
    self.writer, self.schedules = writer, schedules
    self.step_flops, self.peak = step_flops, peak
    self.restart()

  def restart(self) -> None:
    """Start a new timing interval (after compilation, and after each write)."""
    self.t0, self.token_counts, self.steps = time.time(), [], 0

  def add(self, metrics) -> None:
    self.token_counts.append(metrics["tokens"])  # device arrays: read only when written
    self.steps += 1

  def write(self, step: int, metrics) -> None:
    """metrics: the last step's, on the host."""
    dt = time.time() - self.t0
    scalars = {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
               "learning_rate": self.schedules[optimizer.DEFAULT_GROUP](step),
               **{f"learning_rate/{name}": lr(step) for name, lr in self.schedules.items()
                  if name != optimizer.DEFAULT_GROUP},
               "tokens_per_s": float(np.sum(jax.device_get(self.token_counts))) / dt,
               "step_time": dt / self.steps}
    if self.peak:  # model FLOPs over what the devices could have done meanwhile
      scalars["mfu"] = self.step_flops * self.steps / dt / (self.peak * jax.device_count())
    self.writer.write_scalars(step, scalars)
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self.restart()


class Trainer:
  """One run: set up from the config (state initialised or restored), then run()."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    optimizer.groups(config.optim)  # a bad config.optim.groups fails before any work
    os.makedirs(workdir, exist_ok=True)
    self.config, self.workdir = config, workdir
    self.task = task_lib.Task(config, workdir)
    self.model_cfg = build.model_config(config, self.task.tokenizer.vocab_size)
    self.model = vlm.VLM(self.model_cfg)
    self.phases = tokens.phases(config.data.order)
    self.total_steps = config.train.steps * len(self.phases)

    self.mesh = sharding.make_mesh(config.mesh.shape)
    self.rules = sharding.make_rules(config.mesh.rules)
    sharding.check_batch(config.train.batch_size, config.train.grad_accum, self.mesh)
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)
    self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep,
                                      config.train.async_checkpoint)
    self._log_summary()

  def _log_summary(self) -> None:
    c, m = self.config, self.model_cfg
    logging.info("Run: stage %s, mask %s, order %s, %d steps of %d rows x %d tokens; mesh %s "
                 "over %d devices in %d processes; workdir %s", c.stage, c.mask, c.data.order,
                 self.total_steps, c.train.batch_size, c.data.pack_length, dict(self.mesh.shape),
                 self.mesh.size, jax.process_count(), os.path.abspath(self.workdir))
    logging.info("Model: LLM %d layers x %d (%d heads, %d kv, vocab %d, %s, attention %s); "
                 "vision %d layers x %d at %d px; connector %s, %d tokens per image",
                 m.llm.layers, m.llm.hidden, m.llm.heads, m.llm.kv_heads, m.llm.vocab_size,
                 m.llm.dtype, m.llm.attention, m.vision.layers, m.vision.hidden,
                 m.vision.image_size, m.connector.kind, m.tokens_per_image)

  # --- state ------------------------------------------------------------------------------------

  def _initial_state(self, opt):
    """(state, its shardings, the data iterator): restored from the workdir's latest checkpoint,
    else fresh (from config.init_from's parameters when given).

    With LoRA adapters a checkpoint holds the adapters alone (_saved): the frozen base comes
    from config.init_from (or the seed) again on resume, as it did at the start."""
    c = self.config
    target = step_lib.abstract_state(self.model_cfg, opt, self.mesh, self.rules, c.optim)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, target)
    dtypes = jax.tree_util.tree_map(lambda x: x.dtype, target.params)
    # the newest checkpoint that restores whole (a damaged newer one is logged and set aside)
    restored = self.ckpt.restore_newest(self._saved(target.params), target.opt_state,
                                        self._iterator)
    if restored is not None:
      self.phase, params = restored.phase, restored.params
      if lora.has_adapters(target.params):
        params = lora.combine(lora.split(self._start_params(dtypes))[0], params)
      logging.info("Resuming from %s at step %d (phase %s).", self.ckpt.directory,
                   restored.step, self.phases[self.phase])
      state = step_lib.TrainState(jax.device_put(np.int32(restored.step), shardings.step),
                                  params, restored.opt_state)
      return state, shardings, restored.iterator
    self.phase = 0
    if lora.has_adapters(target.params) and jax.process_index() == 0:
      with open(os.path.join(self.workdir, "lora.json"), "w") as f:  # for convert export
        json.dump({**c.lora.to_dict(), "init_from": c.init_from}, f, indent=1)
    if not c.init_from and c.stage == "sft":
      logging.warning("No PT checkpoint given (config.init_from is empty): SFT trains the "
                      "connector and LLM from scratch.")
    state = step_lib.init_state(self.model, opt, c.seed, shardings, self.mesh, self.rules,
                                self._start_params(dtypes))
    return state, shardings, self._iterator(0)

  def _start_params(self, dtypes):
    """config.init_from's parameters (LoRA: its base, fresh adapters), else fresh ones."""
    params, step = build.initial_params(self.model, self.config.seed, self.mesh, self.rules,
                                        self.config.init_from)
    if self.config.init_from:
      logging.info("Initialised from %s (step %s).", self.config.init_from, step)
    return jax.tree_util.tree_map(lambda p, d: p.astype(d), params, dtypes)

  def _saved(self, params):
    """What a checkpoint holds of the parameters: all of them, or the LoRA adapters alone."""
    return lora.split(params)[1] if lora.has_adapters(params) else params

  def _iterator(self, phase: int):
    return self.task.train_iterator(self.phases[phase], self.model_cfg.tokens_per_image)

  # --- the loop ---------------------------------------------------------------------------------

  def run(self) -> dict[str, float]:
    with sharding.use(self.mesh, self.rules):
      train_step, log = self._setup()
      try:
        step, stopped = self._train(train_step, log)
      except BaseException as e:
        self._abandon(e)
        raise
      if stopped:
        return self._stopped(step)
      self._close_data()
      metrics, results = self._evaluate("test", os.path.join(self.workdir, "eval"))
    return self._finish(step, metrics, results)

  def _train(self, train_step, log) -> tuple[int, bool]:
    """Steps until the end or a stop request. Returns (the last step, whether stopped)."""
    c = self.config
    report = periodic_actions.ReportProgress(num_train_steps=self.total_steps,
                                             writer=self.writer)
    start = step = int(jax.device_get(self.state.step))
    with StopRequest(self.mesh) as stop:
      while step < self.total_steps:
        self._next_phase(step)
        batch = sharding.put_batch(self._next_batch(step), self.mesh)
        if step == start:  # compiled here (the call reuses it) to report what it needs
          self._report_memory(train_step.lower(self.state, batch).compile())
          log.restart()
        self.state, metrics = train_step(self.state, batch)
        log.add(metrics)
        step += 1
        stopping = stop.after_step()
        report(step)
        log_now = step % c.train.log_every == 0 or step == self.total_steps
        save_now = self._checkpoint_due(step) or stopping
        if log_now or save_now:  # metrics to the host once; never log or save a NaN state
          host = jax.device_get(metrics)
          self._check_finite(host, step)
          if log_now:
            log.write(step, host)
          if save_now:
            self.ckpt.save(step, self._saved(self.state.params), self.state.opt_state,
                           self.phase, self.iterator)
        if c.train.eval_every and step % c.train.eval_every == 0:
          val, _ = self._evaluate("validation")
          self.writer.write_scalars(step, {f"val/{k}": v for k, v in val.items()})
        if stopping:
          return step, True
    return step, False

  def _next_batch(self, step: int):
    """The next training batch. A record that fails (with config.data.skip_bad_records off)
    stops the run naming it and the checkpoint a restart resumes from."""
    try:
      return next(self.iterator)
    except chat.BadRecord as e:
      last = self.ckpt.latest_step()
      raise chat.BadRecord(
          f"Training stopped at step {step + 1} by a bad record: {e} "
          + (f"The last checkpoint, step {last} in {self.ckpt.directory}, is kept; the same "
             "command resumes from it." if last is not None else "No checkpoint was saved yet.")
      ) from e

  def _abandon(self, error: BaseException) -> None:
    """After an error: a save still writing finishes (the last good checkpoint), and the data
    iterator's thread stops."""
    if not isinstance(error, ckpt_lib.CheckpointError):
      try:
        self.ckpt.wait()
      except ckpt_lib.CheckpointError as e:
        logging.error("%s", e)
    _close(self.iterator)

  def _setup(self):
    """The optimizer, the state (fresh or restored), the jitted step and the metrics log.

    Returns: (train_step, MetricsLog).
    """
    c = self.config
    abstract = build.param_shardings(self.model_cfg, self.mesh, self.rules)[0]
    opt, _ = optimizer.make(c.optim, self.total_steps, abstract)
    trainable = optimizer.trainable_mask(abstract, c.optim.freeze)
    self.state, shardings, self.iterator = self._initial_state(opt)
    train_step = step_lib.jit_train_step(self.model, opt, c.mask, c.train.grad_accum, trainable,
                                         shardings, self.mesh)
    n_train = sum(int(np.prod(p.shape)) for p, t in zip(jax.tree_util.tree_leaves(abstract),
                                                       jax.tree_util.tree_leaves(trainable)) if t)
    step_flops = flops.train_step(self.model_cfg, c.train.batch_size, c.data.pack_length,
                                  c.data.max_images,
                                  memory.trainable_components(abstract, c.optim.freeze))
    peak = c.train.peak_flops or flops.peak_flops(jax.devices()[0].device_kind)
    logging.info("Trainable parameters: %d; model FLOPs per step: %.3g; peak per device: %s "
                 "FLOP/s.", n_train, step_flops, peak)
    log = MetricsLog(self.workdir, self.writer,
                     optimizer.group_schedules(c.optim, self.total_steps), step_flops, peak)
    return train_step, log

  def _next_phase(self, step: int) -> None:
    """DOT: at the end of the T&I phase the I&T phase starts with a fresh iterator."""
    if step == (self.phase + 1) * self.config.train.steps:
      self.phase += 1
      _close(self.iterator)
      self.iterator = self._iterator(self.phase)

  def _checkpoint_due(self, step: int) -> bool:
    return (step % self.config.train.checkpoint_every == 0 or step == self.total_steps
            or step == (self.phase + 1) * self.config.train.steps)  # the end of a phase

  def _check_finite(self, metrics, step: int) -> None:
    if not np.isfinite(metrics["loss"]):
      raise FloatingPointError(
          f"Loss is {metrics['loss']} at step {step}: training stopped. The last good "
          f"checkpoint is step {self.ckpt.latest_step()} in {self.ckpt.directory}. Lower "
          "config.optim.lr or raise config.optim.warmup_steps, then restart in the same workdir "
          "to resume from it.")

  def _report_memory(self, compiled) -> None:
    """Log bytes per device: the estimate (mma_jax.train.memory) and what XLA compiled."""
    c = self.config
    usage = memory.estimate(self.model_cfg, self.mesh, self.rules, c.optim, c.train.batch_size,
                            c.data.pack_length, c.data.max_images, c.train.grad_accum)
    stats = jax.local_devices()[0].memory_stats() or {}
    logging.info("Memory estimate: %s", memory.format_usage(usage, stats.get("bytes_limit")))
    analysis = compiled.memory_analysis() if compiled is not None else None
    if analysis is not None:
      logging.info("Compiled train step per device: arguments %s, temporaries %s.",
                   memory.human(analysis.argument_size_in_bytes),
                   memory.human(analysis.temp_size_in_bytes))

  def _close_data(self) -> None:
    self.ckpt.close()
    _close(self.iterator)
    if self.task.skips.count:
      logging.warning("%d bad training records were skipped (config.data.skip_bad_records).",
                      self.task.skips.count)

  def _stopped(self, step: int) -> dict:
    self._close_data()
    logging.warning("Stopped by SIGTERM at step %d; checkpoint saved in %s.", step,
                    self.ckpt.directory)
    self.writer.flush()
    return {}

  # --- evaluation -------------------------------------------------------------------------------

  def _evaluate(self, split: str, out: str = ""):
    """The Task's own split, then each of config.eval.benchmarks, through
    runner.run_benchmark (the evaluate CLI's path). Returns (metrics: the split's, plus
    '<bench>/<metric>' for each benchmark; results per benchmark name). PT is not evaluated."""
    if self.config.stage == "pt":
      return {}, {}
    params = {"params": self.state.params}
    own = runner.own_benchmark(self.task).name
    results = {own: runner.run_benchmark(self.model, params, self.task, self.config, own,
                                             split=split, out=out)}
    metrics = dict(results[own]["metrics"])
    if split == "test" and self.config.eval.get("train_examples", 0):  # fit, next to test
      train = runner.run_benchmark(self.model, params, self.task, self.config, own,
                                   split="train")
      metrics.update({f"train/{k}": v for k, v in train["metrics"].items()})
    for name, path in scoring.parse_list(self.config.eval.benchmarks):
      results[name] = runner.run_benchmark(self.model, params, self.task, self.config, name,
                                               path, out=out)
      metrics.update({f"{name}/{k}": v for k, v in results[name]["metrics"].items()})
    return metrics, results

  def _finish(self, step: int, metrics: dict, results: dict) -> dict[str, float]:
    """Write the test metrics (TensorBoard, results.json) and log them as tables."""
    self.writer.write_scalars(step, {f"test/{k}": v for k, v in metrics.items()})
    self.writer.flush()
    own = runner.own_benchmark(self.task).name
    if jax.process_index() == 0:  # every process computed the same metrics
      with open(os.path.join(self.workdir, "results.json"), "w") as f:
        json.dump({"step": step, "metrics": metrics,
                   "examples": results.get(own, {}).get("examples", []),
                   "benchmarks": {n: r for n, r in results.items() if n != own}}, f, indent=1)
    logging.info("Test metrics at step %d:\n%s", step, runner.format_metrics(metrics))
    for name, r in results.items():
      if name != own:
        logging.info("Benchmark at step %d:\n%s", step, runner.format_results(r))
    return metrics


def _close(iterator):
  """Stop a prefetching iterator's thread so it does not outlive the run."""
  close = getattr(iterator, "close", None)
  if close is not None:
    close()
