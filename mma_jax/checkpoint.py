"""Orbax checkpoints: parameters, optimizer state, step and the Grain iterator, saved together.

Items of one checkpoint step:
  params     the model parameters (what a later stage or a converter starts from)
  opt_state  the optimizer state
  meta       JSON: {"step": int, "phase": int}
  data       the Grain iterator state (one JSON file per process)
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

ITEMS = ("params", "opt_state", "meta", "data")


def _abstract(tree):
  """ShapeDtypeStructs with the arrays' shardings: a restore target that keeps the layout."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
  """A CheckpointManager over workdir/checkpoints keeping the last `keep` steps (async)."""

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    handlers = {"params": ocp.StandardCheckpointHandler(),
                "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS,
                                         item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, phase: int, data_iterator) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave({"step": int(step), "phase": int(phase)}),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
    logging.info("Saving checkpoint step %d to %s", step, self.directory)

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, params, opt_state, data_iterator):
    """Restore into the layout of the given (template) params / opt_state; the iterator in place.

    Returns: (params, opt_state).
    """
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params)),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return out["params"], out["opt_state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(path: str, template):
  """Parameters of the latest checkpoint under `path` (a workdir, its checkpoints/ dir or a step
  dir), restored into the layout of `template`. Used for SFT from a PT run and for conversion."""
  path = os.path.abspath(path)
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
      manager = ocp.CheckpointManager(candidate, item_names=ITEMS,
                                      options=ocp.CheckpointManagerOptions(read_only=True))
      step = manager.latest_step()
      try:
        return manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(template))))["params"], step
      except (ValueError, KeyError) as e:
        raise ValueError(
            f"The checkpoint {candidate}/{step} does not fit this model: {e}. "
            "Use the same config.model as the run that wrote it.") from e
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
