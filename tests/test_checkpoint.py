"""Checkpoint faults of a long run: a damaged newest checkpoint, saves that fail (disk full,
permission denied). Real Orbax checkpoints of real runs; the faults are real damage on disk or
an OSError raised by a checkpoint writer."""
import errno
import glob
import logging
import os
import shutil

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mma_jax import checkpoint
from mma_jax.train.loop import train_and_evaluate
from tests.train.test_loop import read_log, small_config

STEPS = 6


def pt_config(data_dir, **train):
  """A PT run (no evaluation at the end) of STEPS steps, checkpoints every 2 (keep 2: 4 and 6)."""
  c = small_config(data_dir, steps=STEPS, checkpoint_every=2, **train)
  c.update(stage="pt", mask="causal")
  return c


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """(config, workdir) of an undisturbed run: its losses are what a resumed run must give."""
  tmp = tmp_path_factory.mktemp("straight")
  c = pt_config(str(tmp / "data"))
  train_and_evaluate(c, str(tmp / "run"))
  assert sorted(os.listdir(tmp / "run" / "checkpoints")) == ["4", "6"]
  return c, str(tmp / "run")


def lines(workdir):
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    return len(f.readlines())


def truncate(paths):
  """Cut each file to half its length, as a crash or a full disk during a copy leaves it."""
  assert paths
  for p in paths:
    with open(p, "r+b") as f:
      f.truncate(os.path.getsize(p) // 2)


def damage(step_dir, item):
  """Truncate the data files of one item of a checkpoint step."""
  if item == "data":  # the Grain iterator state: one JSON file per process
    truncate(glob.glob(os.path.join(step_dir, "data", "process_*.json")))
  else:  # params / opt_state: the OCDBT data files of TensorStore
    truncate([p for p in glob.glob(os.path.join(step_dir, item, "**", "d", "*"), recursive=True)
              if os.path.isfile(p)])


@pytest.mark.parametrize("item", ["params", "opt_state", "data"])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(straight, item, tmp_path,
                                                                caplog):
  c, done = straight
  workdir = str(tmp_path / "run")
  shutil.copytree(done, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  damage(os.path.join(ckpts, "6"), item)
  before = lines(workdir)
  with caplog.at_level(logging.WARNING):
    train_and_evaluate(c, workdir)
  # A WARNING names the step, the file and the error.
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(f"step 6 cannot be restored: {os.path.join(ckpts, '6', item)}: " in m
             for m in warned), warned
  # Steps 5 and 6 ran again from step 4, with the undisturbed run's losses.
  assert lines(workdir) == before + 2
  again, first = read_log(workdir), read_log(done)
  np.testing.assert_allclose([again[5], again[6]], [first[5], first[6]], rtol=1e-6)
  # The damaged step is kept aside for a person; a new, whole step 6 took its place.
  assert os.path.isdir(os.path.join(workdir, "checkpoints.damaged", "6", item))
  assert sorted(os.listdir(ckpts)) == ["4", "6"]
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.restore(os.path.join(ckpts, "6", "params"))


def test_no_checkpoint_that_restores_is_one_clear_error(straight, tmp_path):
  c, done = straight
  workdir = str(tmp_path / "run")
  shutil.copytree(done, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  damage(os.path.join(ckpts, "6"), "params")
  damage(os.path.join(ckpts, "4"), "data")
  with pytest.raises(checkpoint.CheckpointError) as e:
    train_and_evaluate(c, workdir)
  msg = str(e.value)
  assert f"No checkpoint in {ckpts} can be restored" in msg
  assert f"step 6: {ckpts}/6/params: " in msg and f"step 4: {ckpts}/4/data: " in msg
  assert "config.init_from" in msg and "start over" in msg
  assert sorted(os.listdir(ckpts)) == ["4", "6"]  # nothing moved: none was found good


def test_evaluation_and_init_from_skip_a_damaged_newest_checkpoint(straight, tmp_path):
  c, done = straight
  workdir = str(tmp_path / "run")
  shutil.copytree(done, workdir)
  with ocp.StandardCheckpointer() as ckptr:
    template = ckptr.restore(os.path.join(workdir, "checkpoints", "4", "params"))
  damage(os.path.join(workdir, "checkpoints", "6"), "params")
  params, step = checkpoint.load_params(workdir, template)
  assert step == 4
  damage(os.path.join(workdir, "checkpoints", "4"), "params")
  with pytest.raises(ValueError, match=r"No checkpoint in .* restores into this model:\n"
                     r"  step 6: .*\n  step 4: "):
    checkpoint.load_params(workdir, template)


# --- saves that fail --------------------------------------------------------------------------

def _step_of(directory) -> int:
  """The step of a checkpoint item's (temporary) directory: .../checkpoints/4.<tmp>/data.<tmp>"""
  return int(os.path.basename(os.path.dirname(str(directory))).split(".")[0])


class _FailedWrite:
  """A commit future of an asynchronous save that fails in the background, as a full disk does
  after the save call returned."""

  def __init__(self, directory):
    self.directory = directory

  def result(self, timeout=None):
    del timeout
    raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))


def fail_data_writer(monkeypatch, step):
  """The data iterator's writer raises 'No space left on device' at `step` (while saving)."""
  save = grain.checkpoint.CheckpointHandler.save

  def full_disk(self, directory, *args, **kwargs):
    if _step_of(directory) == step:
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return save(self, directory, *args, **kwargs)
  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", full_disk)


def fail_params_in_background(monkeypatch, step):
  """The parameters' asynchronous write fails after the save call returned (surfacing at the
  next save or at the end of the run)."""
  async_save = ocp.StandardCheckpointHandler.async_save

  async def failing(self, directory, *args, **kwargs):
    futures = await async_save(self, directory, *args, **kwargs)
    if _step_of(directory) == step:
      futures = list(futures or []) + [_FailedWrite(directory)]
    return futures
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing)


def deny_opt_state(monkeypatch, step):
  """The optimizer state's writer gets 'Permission denied' at `step`."""
  async_save = ocp.StandardCheckpointHandler.async_save

  async def denied(self, directory, *args, **kwargs):
    if _step_of(directory) == step and "opt_state" in os.path.basename(str(directory)):
      raise PermissionError(errno.EACCES, "Permission denied", str(directory))
    return await async_save(self, directory, *args, **kwargs)
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", denied)


@pytest.mark.parametrize("inject, cause, async_save", [
    (fail_data_writer, "No space left on device", False),
    (fail_params_in_background, "No space left on device", True),
    (deny_opt_state, "Permission denied", True),
])
def test_a_failed_save_stops_the_run_and_the_next_start_resumes(straight, tmp_path,
                                                                monkeypatch, inject, cause,
                                                                async_save):
  _, done = straight
  c = pt_config(straight[0].data.dir, async_checkpoint=async_save)
  workdir = str(tmp_path / "run")
  ckpts = os.path.join(workdir, "checkpoints")
  inject(monkeypatch, 4)
  with pytest.raises(checkpoint.CheckpointError) as e:
    train_and_evaluate(c, workdir)
  msg = str(e.value)
  assert f"Saving checkpoint step 4 to {ckpts}/4 failed: " in msg and cause in msg, msg
  assert f"The last complete checkpoint, step 2 ({ckpts}/2), is untouched" in msg
  assert not os.path.exists(os.path.join(workdir, "results.json"))  # the run stopped
  assert [d for d in os.listdir(ckpts) if d.isdigit()] == ["2"]
  monkeypatch.undo()
  train_and_evaluate(c, workdir)  # the same command, once the disk has room again
  again, first = read_log(workdir), read_log(done)
  assert sorted(again) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([again[s] for s in range(3, STEPS + 1)],
                             [first[s] for s in range(3, STEPS + 1)], rtol=1e-6)
  assert sorted(os.listdir(ckpts)) == ["4", "6"]  # the temporary folder of the failed save: gone
