"""Two processes on localhost (launch/local.py, one CPU device each) train as one run on an
fsdp=2 mesh (parameters and optimizer state split across the processes), checkpoint from
both, are stopped by SIGTERM and resume to the same final state and test results as an
uninterrupted run. Also: how mma_jax.distributed tells the start-ups apart."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mma_jax import distributed
from mma_jax.data.shapes import builder as shapes_builder
from tests.train.test_loop import read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


def flags(workdir, data_dir):
  return [f"--workdir={workdir}", "--config=configs/sft_mma.py", f"--config.data.dir={data_dir}",
          "--config.data.train_size=48", "--config.data.validation_size=6",
          "--config.data.test_size=12", "--config.data.pack_length=96", "--config.data.prefetch=0",
          "--config.model.vision.image_size=16", "--config.model.vision.hidden=32",
          "--config.model.vision.layers=1", "--config.model.vision.heads=2",
          "--config.model.vision.mlp_dim=64", "--config.model.llm.hidden=64",
          "--config.model.llm.layers=1", "--config.model.llm.heads=2",
          "--config.model.llm.kv_heads=1", "--config.model.llm.head_dim=32",
          "--config.model.llm.mlp_dim=128", f"--config.train.steps={STEPS}",
          "--config.train.batch_size=4", "--config.train.log_every=1",
          "--config.train.checkpoint_every=4", "--config.train.async_checkpoint=False",
          "--config.optim.warmup_steps=2", "--config.mesh.shape=(1,2,1)",
          "--config.eval.batch_size=12", "--config.eval.prompt_length=64",
          "--config.train.peak_flops=1e12"]  # a made-up peak, so that MFU is logged


def launch(workdir, data_dir, cache_dir):
  # Later launches reuse the first one's compiled programs (same shapes, same topology).
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  cmd = [sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=1",
         f"--log_dir={workdir}/logs", "--", sys.executable, "-m", "mma_jax.main",
         *flags(workdir, data_dir)]
  return subprocess.Popen(cmd, cwd=REPO, env=env)


def saved_params(workdir, step):
  """The checkpoint's parameters as numpy, read in this single-device process."""
  path = os.path.join(workdir, "checkpoints", str(step), "params")
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata.tree
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    return ckptr.restore(path, restore_args=as_numpy)


def logs(workdir, tail=3000):
  """The processes' logs of the last launch in workdir (the ends, for assertion messages)."""
  return "\n".join(open(os.path.join(workdir, "logs", f)).read()[-tail if tail else 0:]
                   for f in sorted(os.listdir(os.path.join(workdir, "logs"))))


def test_two_processes_train_stop_and_resume_to_the_same_state(tmp_path):
  data_dir, cache = str(tmp_path / "data"), str(tmp_path / "jax_cache")
  shapes_builder.builder(data_dir, train_size=48, validation_size=6, test_size=12, image_size=16)
  straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
  proc = launch(straight, data_dir, cache)
  assert proc.wait(timeout=600) == 0, logs(straight)

  proc = launch(stopped, data_dir, cache)
  log = os.path.join(stopped, "train_log.jsonl")
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if os.path.exists(log) and len(open(log).readlines()) >= 2:
      proc.send_signal(signal.SIGTERM)  # the launcher forwards it to both processes
      break
    time.sleep(0.02)
  assert proc.wait(timeout=300) == 0, logs(stopped)
  stop_step = max(read_log(stopped))
  assert 2 <= stop_step < STEPS, "SIGTERM must stop the run mid-way"
  assert os.path.isdir(os.path.join(stopped, "checkpoints", str(stop_step)))
  # Both processes wrote their Grain iterator state into the checkpoint.
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
      os.listdir(os.path.join(stopped, "checkpoints", str(stop_step), "data")))

  proc = launch(stopped, data_dir, cache)
  assert proc.wait(timeout=600) == 0, logs(stopped)
  assert f"checkpoints at step {stop_step}" in logs(stopped, tail=None)
  a, b = read_log(straight), read_log(stopped)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
  with open(os.path.join(straight, "train_log.jsonl")) as f:
    assert all(0 < json.loads(line)["mfu"] < 1 for line in f)
  # Both decoded the test split across the two processes, to the same answers.
  results = [json.load(open(os.path.join(w, "results.json"))) for w in (straight, stopped)]
  assert results[0]["metrics"] == results[1]["metrics"]
  assert results[0]["examples"] == results[1]["examples"]
  pa, pb = saved_params(straight, STEPS), saved_params(stopped, STEPS)
  for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("env,expected", [
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "1"}, "explicit"),
    ({"SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2"}, "slurm"),
    ({"SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "1"}, "single"),
])
def test_start_up_is_detected_from_the_environment(monkeypatch, env, expected):
  for key in list(os.environ):
    if key.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_")):
      monkeypatch.delenv(key)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  if expected == "single" and distributed._on_tpu_vm():  # pylint: disable=protected-access
    expected = "tpu"  # these tests running on a TPU VM
  assert distributed.detect() == expected


@pytest.mark.parametrize("env,expected", [
    # one task per node with 8 GPUs: all 8, not JAX's default of the one at SLURM_LOCALID
    ({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2",
      "SLURM_GPUS_ON_NODE": "8"}, list(range(8))),
    ({"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_NNODES": "1",
      "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [0, 1, 2, 3]),
    # one task per GPU: JAX's default (None) is right
    ({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NUM_NODES": "2",
      "SLURM_GPUS_ON_NODE": "8"}, None),
    ({}, None),  # not under SLURM
])
def test_a_slurm_task_alone_on_its_node_owns_all_its_gpus(monkeypatch, env, expected):
  for key in list(os.environ):
    if key.startswith("SLURM_") or key == "CUDA_VISIBLE_DEVICES":
      monkeypatch.delenv(key)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  assert distributed.slurm_local_device_ids() == expected


def test_partial_coordinator_flags_are_a_clear_error(monkeypatch):
  for key in distributed.ENV.values():
    monkeypatch.delenv(key, raising=False)
  with pytest.raises(ValueError, match="--num_processes"):
    distributed.initialize(coordinator_address="localhost:1234")
