"""Orbax checkpoints: parameters, optimizer state, step and the Grain iterator, saved together.

Items of one checkpoint step:
  params     the model parameters (what a later stage or a converter starts from)
  opt_state  the optimizer state
  meta       JSON: {"step": int, "phase": int}
  data       the Grain iterator state (one JSON file per process)

No checkpoint is trusted blindly: a resume takes the newest step that restores whole (all four
items), logging each newer one that fails and moving it to <checkpoints>.damaged/ for a person
to look at. A save that fails (disk full, permission denied) raises CheckpointError naming the
path and the cause; the last complete checkpoint stays as it was.
"""
from __future__ import annotations

import glob
import os
import shutil
import time
from typing import Any, Callable, NamedTuple

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mma_jax import distributed

ITEMS = ("params", "opt_state", "meta", "data")
# Errors of a failed write: OSError from Python code, ValueError from TensorStore (its statuses).
SAVE_ERRORS = (OSError, ValueError)


class CheckpointError(Exception):
  """A checkpoint that cannot be written, or a workdir none of whose checkpoints restores; the
  message names the paths and says what to do."""


class Restored(NamedTuple):
  """A checkpoint step restored whole; iterator: the data iterator at that step."""
  step: int
  phase: int
  params: Any
  opt_state: Any
  iterator: Any


class Unreadable(Exception):
  """One item of a checkpoint step that does not restore: where (its path) and why."""

  def __init__(self, path: str, error: BaseException):
    self.path, self.reason = path, describe(error)
    super().__init__(f"{path}: {self.reason}")


def describe(error: BaseException) -> str:
  """'Type: message' in one line, without TensorStore's spec dumps (hundreds of lines)."""
  while error.__cause__ is not None and "See full TensorStore details" in str(error):
    error = error.__cause__  # Orbax's generic wrapper; the cause names the file
  text = str(error)
  for marker in ("[tensorstore_spec=", " See full TensorStore details"):
    text = text.split(marker)[0]
  lines = text.strip().splitlines()
  text = lines[0] if lines else ""
  text = text if len(text) <= 400 else text[:400] + " ..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _abstract(tree):
  """ShapeDtypeStructs with the arrays' shardings: a restore target that keeps the layout."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _close(iterator) -> None:
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


def _listing(folder: str) -> list[tuple[str, int]]:
  """(path, size) of every file under folder, for telling whether writes are still landing."""
  out = []
  for root, _, files in os.walk(folder):
    for f in files:
      try:
        out.append((os.path.join(root, f), os.path.getsize(os.path.join(root, f))))
      except OSError:  # removed meanwhile
        pass
  return sorted(out)


class Checkpointer:
  """A CheckpointManager over workdir/checkpoints keeping the last `keep` steps (async)."""

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    # cleanup_tmp_directories: a save that failed half-way (disk full) leaves a temporary
    # folder; the next start removes it.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    handlers = {"params": ocp.StandardCheckpointHandler(),
                "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS,
                                         item_handlers=handlers)
    self._writing = None  # the step of a save that may still be writing in the background

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, phase: int, data_iterator) -> None:
    """Start saving a step (in the background when async); CheckpointError when this save or
    the previous one failed."""
    self.wait()  # a background save's error belongs to its own step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
          meta=ocp.args.JsonSave({"step": int(step), "phase": int(phase)}),
          data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
    except SAVE_ERRORS as e:
      raise self._save_failed(step, e) from e
    self._writing = step
    logging.info("Saving checkpoint step %d to %s", step, self.directory)

  def wait(self) -> None:
    """Block until the last save is written; CheckpointError when it failed."""
    step, self._writing = self._writing, None
    try:
      self.manager.wait_until_finished()
    except SAVE_ERRORS as e:
      raise self._save_failed(step, e) from e

  def _save_failed(self, step: int | None, error: BaseException) -> CheckpointError:
    if step is not None and jax.process_index() == 0:
      self._discard_partial(step)
    self.manager.reload()  # what is on disk: a failed step never got its final name
    complete = [s for s in self.manager.all_steps() if s != step]
    where = os.path.join(self.directory, str(step))
    if complete:
      last = max(complete)
      then = (f"The last complete checkpoint, step {last} ({os.path.join(self.directory, str(last))}"
              "), is untouched: free space or fix the permissions, then run the same command "
              "again to resume from it.")
    else:
      then = "There is no earlier checkpoint: fix the cause, then run again to start over."
    return CheckpointError(f"Saving checkpoint step {step} to {where} failed: "
                           f"{describe(error)}. {then}")

  def _discard_partial(self, step: int, settle_s: float = 0.6, limit_s: float = 30.0) -> None:
    """Remove what a failed save of `step` wrote (Orbax's temporary folder): the space it took
    comes back, and a later save of the step in this process finds nothing half-written. The
    other items' writes may still be landing (TensorStore finishes them): wait until the
    folder stops changing first."""
    for tmp in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
      last, still, start = None, time.time(), time.time()
      while time.time() - still < settle_s and time.time() - start < limit_s:
        now = _listing(tmp)
        if now != last:
          last, still = now, time.time()
        time.sleep(0.1)
      shutil.rmtree(tmp, ignore_errors=True)

  def _item(self, step: int, name: str, args):
    """One item of a step, restored; Unreadable naming its path when it does not restore."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
    except Exception as e:  # pylint: disable=broad-except  # damage shows as many types
      raise Unreadable(os.path.join(self.directory, str(step), name), e) from e

  def restore_meta(self, step: int) -> dict[str, Any]:
    meta = self._item(step, "meta", ocp.args.JsonRestore())
    if not isinstance(meta, dict) or not isinstance(meta.get("phase"), int):
      raise Unreadable(os.path.join(self.directory, str(step), "meta"),
                       ValueError(f"expected {{'step': int, 'phase': int}}, found {meta!r}"))
    return meta

  def restore(self, step: int, params, opt_state, data_iterator):
    """Restore into the layout of the given (template) params / opt_state; the iterator in place.

    Returns: (params, opt_state). Raises Unreadable naming the item that does not restore.
    """
    params = self._item(step, "params", ocp.args.StandardRestore(_abstract(params)))
    opt_state = self._item(step, "opt_state", ocp.args.StandardRestore(_abstract(opt_state)))
    self._item(step, "data", grain.checkpoint.CheckpointRestore(data_iterator))
    return params, opt_state

  def restore_newest(self, params, opt_state,
                     make_iterator: Callable[[int], Any]) -> Restored | None:
    """The newest step that restores whole, into the layout of the template params / opt_state;
    make_iterator(phase) gives a fresh data iterator to restore into. None when there is no
    checkpoint; CheckpointError, listing each step and why, when none restores."""
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        phase = self.restore_meta(step)["phase"]
        iterator = make_iterator(phase)
        try:
          restored = Restored(step, phase, *self.restore(step, params, opt_state, iterator),
                              iterator)
        except Unreadable:
          _close(iterator)
          raise
      except Unreadable as e:
        logging.warning("Checkpoint step %d cannot be restored: %s. Trying the one before.",
                        step, e)
        failed.append((step, e))
        continue
      self._set_aside([s for s, _ in failed], step)
      return restored
    if failed:
      raise CheckpointError(
          f"No checkpoint in {self.directory} can be restored:\n"
          + "".join(f"  step {s}: {e}\n" for s, e in failed)
          + "If the config changed since they were written, use the run's own config. To start "
          f"over, move {self.directory} away (or give a new workdir); to start from other "
          "weights, set config.init_from to a run whose checkpoints restore.")
    return None

  def _set_aside(self, steps: list[int], good: int) -> None:
    """Move the damaged steps newer than `good` to <checkpoints>.damaged/ (training writes those
    steps again; a person may want to look at what went wrong)."""
    if not steps:
      return
    aside = self.directory + ".damaged"

    def move():
      for s in steps:
        src, dst = os.path.join(self.directory, str(s)), os.path.join(aside, str(s))
        if os.path.isdir(src):  # on a shared disk, process 0 has moved it already
          os.makedirs(aside, exist_ok=True)
          n = 1
          while os.path.exists(dst):
            dst, n = os.path.join(aside, f"{s}.{n}"), n + 1
          os.replace(src, dst)

    distributed.process_zero_first(move)
    self.manager.reload()
    logging.warning("Resuming from step %d; the newer checkpoint step(s) %s that did not restore "
                    "were moved to %s (delete them once looked at).", good,
                    ", ".join(map(str, steps)), aside)

  def close(self) -> None:
    self.wait()
    self.manager.close()


def load_params(path: str, template):
  """Parameters of the newest checkpoint under `path` that restores (a workdir, its checkpoints/
  dir or a step dir), into the layout of `template`. Used for SFT from a PT run and for
  evaluation and conversion; a newer step that fails is logged and skipped."""
  path = os.path.abspath(path)
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
      manager = ocp.CheckpointManager(candidate, item_names=ITEMS,
                                      options=ocp.CheckpointManagerOptions(read_only=True))
      failed = []
      for step in sorted(manager.all_steps(), reverse=True):
        try:
          return manager.restore(step, args=ocp.args.Composite(
              params=ocp.args.StandardRestore(_abstract(template))))["params"], step
        except Exception as e:  # pylint: disable=broad-except  # damage shows as many types
          logging.warning("Checkpoint %s cannot be restored (%s); trying the one before.",
                          os.path.join(candidate, str(step), "params"), describe(e))
          failed.append(f"  step {step}: {describe(e)}\n")
      raise ValueError(
          f"No checkpoint in {candidate} restores into this model:\n{''.join(failed)}"
          "Use the same config.model as the run that wrote them (a damaged run: point "
          "config.init_from elsewhere).")
  if os.path.isdir(os.path.join(path, "params")):
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(os.path.join(path, "params"), _abstract(template)), None
  raise FileNotFoundError(f"No checkpoint found under {path} (config.init_from): expected a "
                          "workdir with checkpoints/<step>/params or a step directory.")


def load_saved_params(path: str):
  """(parameters as saved, as numpy arrays; step) of the latest checkpoint in a workdir: no
  template needed (e.g. a LoRA run's adapters, for export)."""
  candidate = os.path.join(os.path.abspath(path), "checkpoints")
  if not os.path.isdir(candidate) or not any(d.isdigit() for d in os.listdir(candidate)):
    raise FileNotFoundError(f"No checkpoint found under {candidate}: expected a training "
                            "workdir with checkpoints/<step>/params.")
  manager = ocp.CheckpointManager(candidate, item_names=ITEMS,
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(candidate, str(step), "params"))
  return jax.tree_util.tree_map(np.asarray, params), step
