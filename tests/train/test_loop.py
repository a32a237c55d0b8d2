"""train_and_evaluate end to end on a very small config: loss, resume, faults, freezing."""
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mma_jax import config as config_lib
from mma_jax import tokens
from mma_jax.data import chat, mixture, pipeline, tfds_records, vocab
from mma_jax.data import task as task_lib
from mma_jax.data.shapes import generate
from mma_jax.models import vlm
from mma_jax.train import optimizer
from mma_jax.train import step as step_lib
from mma_jax.evaluate import runner
from mma_jax.train.loop import train_and_evaluate
from tests.data.test_importers import png_bytes
from tests.layouts import tiny_vlm_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def small_config(data_dir, **train):
  c = config_lib.base_config()
  c.model.vision.update(image_size=16, hidden=32, layers=1, heads=2, mlp_dim=64)
  c.model.llm.update(hidden=64, layers=1, heads=2, kv_heads=1, head_dim=32, mlp_dim=128)
  c.data.update(dir=data_dir, train_size=48, validation_size=6, test_size=12, pack_length=96,
                prefetch=0)
  c.train.update(steps=6, batch_size=4, log_every=1, checkpoint_every=3, async_checkpoint=False)
  c.train.update(train)
  c.optim.warmup_steps = 2
  c.eval.update(batch_size=12, prompt_length=64)
  return c


def read_log(workdir):
  """step -> loss, the last line per step winning (a resumed run re-logs nothing earlier)."""
  out = {}
  with open(os.path.join(workdir, "train_log.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      out[row["step"]] = row["loss"]
  return out


def test_golden_one_step_loss(data_dir, tmp_path):
  c = small_config(data_dir, steps=1)
  c.eval.train_examples = 10  # scored too, as train/<metric>: the fit next to the test score
  metrics = train_and_evaluate(c, str(tmp_path))
  train = {k[len("train/"):]: v for k, v in metrics.items() if k.startswith("train/")}
  assert set(train) == {k for k in metrics if not k.startswith("train/")}
  assert 0 <= train["accuracy/all"] <= 1
  with open(os.path.join(str(tmp_path), "results.json")) as f:
    assert json.load(f)["metrics"]["train/accuracy/all"] == train["accuracy/all"]
  loss = read_log(str(tmp_path))[1]
  # A fresh model predicts near-uniformly over the tokenizer's vocabulary.
  assert abs(loss - np.log(vocab.shapes_tokenizer().vocab_size)) < 0.5
  assert loss == pytest.approx(4.5444, abs=2e-3)  # golden: same seed, data and model
  assert set(metrics) >= {f"accuracy/{t}" for t in generate.QUESTION_TYPES}
  assert os.path.exists(os.path.join(str(tmp_path), "results.json"))


def test_resume_after_sigterm_gives_the_same_losses(data_dir, tmp_path):
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  c = small_config(data_dir, steps=6, checkpoint_every=3)
  c.mask = "mma"
  train_and_evaluate(c, straight)

  def sigterm_after_step_2():
    log = os.path.join(interrupted, "train_log.jsonl")
    while not (os.path.exists(log) and len(open(log).readlines()) >= 2):
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=sigterm_after_step_2, daemon=True).start()
  assert train_and_evaluate(c, interrupted) == {}  # stopped early, checkpoint saved
  stopped_at = max(read_log(interrupted))
  assert stopped_at < 6
  assert os.path.isdir(os.path.join(interrupted, "checkpoints", str(stopped_at)))
  train_and_evaluate(c, interrupted)  # resumes from the SIGTERM checkpoint
  a, b = read_log(straight), read_log(interrupted)
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)


def test_main_command_resumes_after_sigkill(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "mma_jax.main", "--config=configs/sft_mma.py",
         f"--workdir={workdir}", f"--config.data.dir={data_dir}",
         "--config.data.train_size=48", "--config.data.validation_size=6",
         "--config.data.test_size=12", "--config.train.steps=40",
         "--config.train.checkpoint_every=5", "--config.train.log_every=1",
         "--config.train.batch_size=4", "--config.model.llm.layers=1",
         "--config.model.llm.hidden=64", "--config.model.vision.layers=1",
         "--config.eval.batch_size=12"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = [int(d) for d in os.listdir(ckpts) if d.isdigit()]
  assert saved and max(saved) < 40, "the run must be killed mid-way"
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Resuming from {ckpts} at step {max(saved)}" in done.stderr
  assert max(read_log(workdir)) == 40
  # The log is the run's own: its lines are there, and every INFO line comes from mma_jax or
  # clu (no Orbax / TFDS / JAX chatter without --verbosity=1).
  for own in ("Run: stage sft", "Memory estimate", " loss=", "steps/s", "Test metrics at step 40"):
    assert own in done.stderr, own
  own_files = {f for pkg in ("mma_jax", "clu")
               for _, _, fs in os.walk(os.path.dirname(importlib.util.find_spec(pkg).origin))
               for f in fs if f.endswith(".py")}
  info_from = set(re.findall(r"^I\d{4} [\d:.]+ +\d+ (\S+\.py):\d+\]", done.stderr, re.M))
  assert info_from and info_from <= own_files, info_from - own_files
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["step"] == 40 and "accuracy/count" in results["metrics"]


def test_unknown_config_key_is_a_clear_error(tmp_path):
  done = subprocess.run([sys.executable, "-m", "mma_jax.main", "--config=configs/sft_mma.py",
                         f"--workdir={tmp_path}", "--config.train.stepz=3"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode != 0 and "stepz" in done.stderr


@pytest.mark.parametrize("key,value,match", [
    ("mask", "bidirectional", "config.mask='bidirectional'"),
    ("train.grad_accum", 3, "config.train.grad_accum=3: must divide"),
    ("data.order", "X&Y", "config.data.order"),
    ("eval.train_examples", -1, "config.eval.train_examples=-1"),
    ("data.read_ahead", 0, "config.data.read_ahead=0: must be at least 1"),
])
def test_impossible_values_name_the_key(key, value, match):
  c = config_lib.base_config()
  section, _, name = key.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  c = small_config(data_dir, steps=6, checkpoint_every=1)
  c.optim.update(lr=1e30, warmup_steps=1, clip_norm=0.0)
  with pytest.raises(FloatingPointError, match="The last good checkpoint is step") as e:
    train_and_evaluate(c, str(tmp_path))
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert saved and f"step {saved[-1]}" in str(e.value)
  losses = read_log(str(tmp_path))
  assert all(np.isfinite(losses[s]) for s in saved)


def _caption_source(root, name, n, bad):
  """An imported PT source (ArrayRecord) of n caption records; record `bad`'s image bytes do not
  decode (the importer checks images, so such a record only comes from damage after import)."""
  items = [({"id": f"{name}-{i}", "image": [f"{i}.png"], "conversations": [],
             "caption": "a red box", "source": name, "task_type": "caption"},
            [b"\x89PNG damaged" if i == bad else png_bytes((10 * i, 0, 0))]) for i in range(n)]
  tfds_records.write(os.path.join(root, name), "train", items)


def _read_order(n, seed):
  """Which record of a one-source mixture the pipeline reads at each position (its mix, then
  its shuffle: Task.source and pipeline.train_dataset)."""
  mixed = mixture.mix([grain.MapDataset.source(list(range(n)))], [1.0], seed)
  return list(grain.MapDataset.source(mixed).shuffle(seed=seed))


def test_a_record_that_fails_mid_run_stops_it_or_is_skipped(tmp_path, caplog):
  # One example per row, 2 rows a step; Grain reads a few records ahead: this one fails at
  # step 6, after the checkpoints of steps 2 and 4.
  n, position = 48, 24
  bad = _read_order(n, 0)[position]
  _caption_source(str(tmp_path / "records"), "mine", n, bad)
  c = small_config(str(tmp_path / "records"), steps=8, checkpoint_every=2, async_checkpoint=True)
  c.update(stage="pt", mask="causal")
  c.data.update(source="records", mixture="mine=1", packing=False, prefetch=2)
  workdir = str(tmp_path / "run")
  with pytest.raises(chat.BadRecord) as e:
    train_and_evaluate(c, workdir)
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved and saved[-1] >= 2 and max(read_log(workdir)) >= 3  # well after the start
  assert saved[-1] < 8 and not os.path.exists(os.path.join(workdir, "results.json"))
  msg = str(e.value)
  assert f"Record 'mine-{bad}' (source 'mine'): image '{bad}.png' cannot be decoded" in msg
  assert "Training stopped at step" in msg
  assert f"The last checkpoint, step {saved[-1]} in {workdir}/checkpoints, is kept" in msg
  # The same command with skip_bad_records: it resumes from that checkpoint and goes on,
  # the record counted and logged with its id.
  c.data.skip_bad_records = True
  with caplog.at_level(logging.INFO, logger="absl"):  # whatever verbosity others left
    train_and_evaluate(c, workdir)
  logged = [r.getMessage() for r in caplog.records]
  assert any(f"at step {saved[-1]} " in m and "Resuming from" in m for m in logged), logged
  assert any(f"Skipped bad record (1 so far): Record 'mine-{bad}' (source 'mine')" in m
             for m in logged)
  assert any("1 bad training records were skipped" in m for m in logged)
  assert max(read_log(workdir)) == 8 and os.path.exists(os.path.join(workdir, "results.json"))


# --- the train step itself, on the tiny test model -------------------------------------------

def _rows(packing, n_rows):
  records = [generate.make_example(2, "train", i, image_size=16) for i in range(12)]
  encode = functools.partial(chat.encode, tok=vocab.shapes_tokenizer(), tokens_per_image=4,
                             image_size=16)
  ds = pipeline.train_dataset(records, encode, batch_size=n_rows, pack_length=160,
                                    max_images=4, packing=packing, num_bins=1, prefetch=0)
  return next(iter(ds))


@pytest.fixture(scope="module")
def tiny():
  model = vlm.VLM(tiny_vlm_config())
  batch = _rows(True, 2)
  params = jax.jit(lambda: model.init(jax.random.key(0), {k: batch[k] for k in tokens.MODEL_KEYS},
                                      "mma")["params"])()
  return model, jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params,
                                       is_leaf=lambda x: hasattr(x, "value"))


@pytest.mark.parametrize("kind", ["causal", "mma"])
def test_packed_and_padded_batches_give_the_same_loss(tiny, kind):
  model, params = tiny
  packed = _rows(True, 1)
  k = len(set(packed["segment_ids"][0].tolist()) - {0})
  padded = _rows(False, k)

  def loss(batch):
    logits, _ = model.apply({"params": params}, {key: batch[key] for key in tokens.MODEL_KEYS},
                            kind)
    return step_lib.token_loss(logits, batch["targets"], batch["loss_mask"])

  (s1, n1), (s2, n2) = loss(packed), loss(padded)
  assert float(n1) == float(n2) > 0
  np.testing.assert_allclose(float(s1), float(s2), rtol=1e-5)


def test_grad_accumulation_and_freezing(tiny):
  model, params = tiny
  batch = _rows(True, 4)
  cfg = config_lib.base_config().optim
  results = {}
  for accum, freeze in [(1, ("vision/.*",)), (2, ("vision/.*",)), (1, ())]:
    cfg.freeze = freeze
    opt, _ = optimizer.make(cfg, 10, params)
    trainable = optimizer.trainable_mask(params, freeze)
    step = jax.jit(step_lib.make_train_step(model, opt, "mma", accum, trainable))
    state, m = step(step_lib.TrainState(jnp.int32(0), params, opt.init(params)), batch)
    results[(accum, freeze)] = (state.params, float(m["loss"]))
  (p1, l1), (p2, l2), (p3, _) = results.values()
  assert l1 == pytest.approx(l2, rel=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  v0, v1, v3 = (p["vision"]["patch"]["kernel"] for p in (params, p1, p3))
  np.testing.assert_array_equal(v0, v1)          # frozen: exactly unchanged
  assert np.abs(np.asarray(v3) - np.asarray(v0)).max() > 0  # trainable: moved
  np.testing.assert_raises(AssertionError, np.testing.assert_array_equal,
                           p1["llm"]["lm_head"]["kernel"], params["llm"]["lm_head"]["kernel"])


def test_pt_then_dot_sft_from_the_pt_checkpoint(data_dir, tmp_path):
  pt = small_config(data_dir, steps=2, checkpoint_every=2)
  pt.update(stage="pt", mask="causal")
  train_and_evaluate(pt, str(tmp_path / "pt"))
  sft = small_config(data_dir, steps=2, checkpoint_every=2)
  sft.update(mask="mma", init_from=str(tmp_path / "pt"))
  sft.data.order = "DOT"
  train_and_evaluate(sft, str(tmp_path / "sft"))
  scratch = small_config(data_dir, steps=1)
  scratch.data.order = "T&I"
  train_and_evaluate(scratch, str(tmp_path / "scratch"))
  dot = read_log(str(tmp_path / "sft"))
  assert sorted(dot) == [1, 2, 3, 4]  # DOT: T&I steps, then as many I&T steps
  # Same first batch (T&I) as the scratch run; a different loss shows the PT weights were used.
  assert dot[1] != pytest.approx(read_log(str(tmp_path / "scratch"))[1], abs=1e-4)


def test_per_group_learning_rates_are_logged(data_dir, tmp_path):
  c = small_config(data_dir, steps=2)
  c.optim.freeze = ()  # tune the vision tower too, slowly
  c.optim.groups = (("vision", "vision/.*", 1e-4, 0.0),)
  train_and_evaluate(c, str(tmp_path))
  schedules = optimizer.group_schedules(c.optim, 2)
  rows = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert r["learning_rate/vision"] == pytest.approx(float(schedules["vision"](r["step"])))
    assert r["learning_rate"] == pytest.approx(float(schedules["default"](r["step"])))


def test_lora_trains_adapters_alone_checkpoints_them_and_resumes(data_dir, tmp_path):
  base = small_config(data_dir, steps=1)
  train_and_evaluate(base, str(tmp_path / "base"))
  c = small_config(data_dir, steps=4, checkpoint_every=2)
  c.init_from = str(tmp_path / "base")
  c.lora.rank = 4
  c.optim.frozen_dtype = "bfloat16"  # the base weights kept in bf16
  workdir = str(tmp_path / "lora")
  metrics = train_and_evaluate(c, workdir)
  first = read_log(workdir)
  # A checkpoint holds the adapters alone: every saved parameter is a lora_a / lora_b.
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore(os.path.join(workdir, "checkpoints", "4", "params"))
  paths = [optimizer.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]]
  assert paths and all(optimizer.ADAPTER.fullmatch(p) for p in paths), paths[:5]
  assert np.abs(saved["llm"]["layers"]["q"]["lora_b"]).max() > 0  # trained (from zero)
  # Resuming rebuilds the base from init_from: steps 3-4 again give the same losses.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  train_and_evaluate(c, workdir)
  again = read_log(workdir)
  np.testing.assert_allclose([again[3], again[4]], [first[3], first[4]], rtol=1e-5)
  # The evaluate command's path (base from init_from + the adapters) scores the same.
  results = runner.run(c, workdir, "shapes", out=str(tmp_path / "eval"))
  assert results["metrics"]["accuracy/all"] == pytest.approx(metrics["accuracy/all"])


def test_anyres_trains_and_evaluates_on_the_built_in_data(data_dir, tmp_path):
  """The shapes benchmark rendered at twice the tower's size, each image tiled (AnyRes): the
  main path trains and evaluates, every image being a thumbnail + its grid's tiles."""
  c = small_config(str(tmp_path / "data"), steps=1)
  c.data.update(render_size=32, anyres_grids=((1, 2), (2, 1), (2, 2)), max_images=10,
                pack_length=128)
  c.eval.update(max_images=10, prompt_length=96)
  task = task_lib.Task(c, str(tmp_path / "run"))
  record = next(iter(task.source("train")))
  assert record["images"][0].shape == (32, 32, 3)  # rendered at 32 px
  ex = task._record_encode(4, "I&T")(record)  # pylint: disable=protected-access
  tiles_per_image = 1 + 4  # a square image: the 2 x 2 grid, after the thumbnail
  assert ex["images"].shape == (tiles_per_image * len(record["images"]), 16, 16, 3)
  assert np.sum(ex["modality"] == 1) == 4 * tiles_per_image * len(record["images"])
  metrics = train_and_evaluate(c, str(tmp_path / "run"))
  assert "accuracy/all" in metrics


def test_video_clips_train_and_evaluate_on_the_built_in_data(tmp_path):
  """The shapes benchmark as short clips (objects appearing frame by frame; the last frame is
  the still image): every clip is one media span and the main path trains and evaluates."""
  c = small_config(str(tmp_path / "data"), steps=1)
  c.data.update(video_frames=3, max_images=6, pack_length=128)
  c.eval.update(max_images=6, prompt_length=96)
  task = task_lib.Task(c, str(tmp_path / "run"))
  record = next(iter(task.source("train")))
  still = generate.make_example(0, "train", int(record["id"].rsplit("-", 1)[1]), 16)
  assert record["images"][0].shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(record["images"][0][-1], still["images"][0])
  drawn = lambda img: np.sum(np.any(img != generate.BACKGROUND, axis=-1))
  assert drawn(record["images"][0][0]) <= drawn(record["images"][0][-1])
  ex = task._record_encode(4, "I&T")(record)  # pylint: disable=protected-access
  assert np.sum(ex["modality"] == 1) == 4 * 3 * len(record["images"])
  metrics = train_and_evaluate(c, str(tmp_path / "run"))
  assert "accuracy/all" in metrics
