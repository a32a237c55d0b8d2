"""Weighted mixtures of imported sources, and import -> Grain pipeline -> one training step."""
import collections

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from mma_jax import config as config_lib
from mma_jax import tokens
from mma_jax.data import mixture, task, vocab
from mma_jax.data.importers import import_source
from mma_jax.evaluate import prompts
from mma_jax.models import vlm
from mma_jax.train import optimizer
from mma_jax.train import step as step_lib
from tests.data.test_importers import llava_fixture, png_bytes, wds_shard
from tests.layouts import tiny_vlm_config


def test_parse_presets_overrides_and_errors():
  paper = mixture.parse("aki_sft")
  assert len(paper) == 11 and sum(paper.values()) == pytest.approx(1.0)
  assert paper["vsr"] / paper["vqav2"] == pytest.approx(.026 / .103)
  assert paper["vg"] / paper["refcoco+"] == pytest.approx(.047 / .103)
  mine = mixture.parse("aki_sft, vsr=0.103, llava150k=0, /data/extra=0.2")
  assert "llava150k" not in mine and mine["vsr"] == pytest.approx(mine["gqa"])
  assert mine["/data/extra"] / mine["gqa"] == pytest.approx(0.2 / 0.103)
  assert mixture.parse("a=3,b=1") == {"a": 0.75, "b": 0.25}
  for spec, message in [("nonsense", "neither NAME=WEIGHT nor a preset"),
                        ("a=-1", "weight >= 0"), ("a=x", "weight >= 0"),
                        ("a=0", "no source with a positive weight")]:
    with pytest.raises(ValueError, match=f"config.data.mixture={spec!r}: .*{message}"):
      mixture.parse(spec)


def test_mix_follows_the_weights_and_covers_every_record():
  a = grain.MapDataset.source([f"a{i}" for i in range(5)])
  b = grain.MapDataset.source([f"b{i}" for i in range(40)])
  mixed = mixture.mix([a, b], [0.5, 0.5], seed=3)
  assert len(mixed) == 80  # b needs 80 draws at weight 1/2 to show each record once
  items = list(mixed)
  counts = collections.Counter(x[0] for x in items)
  assert counts == {"a": 40, "b": 40}
  assert set(items) == {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(40)}
  # The small source is repeated, reshuffled on each pass.
  passes = [[x for x in items if x[0] == "a"][k:k + 5] for k in (0, 5)]
  assert sorted(passes[0]) == sorted(passes[1]) and passes[0] != passes[1]
  assert list(mixture.mix([a, b], [0.5, 0.5], seed=3)) == items  # deterministic
  skewed = list(mixture.mix([a, b], [0.9, 0.1], seed=0))
  share = sum(x[0] == "a" for x in skewed) / len(skewed)
  assert share == pytest.approx(0.9, abs=0.01)
  # Uneven sizes and the paper's uneven weights: still every record at least once.
  parts = [grain.MapDataset.source([f"{c}{i}" for i in range(n)]) for c, n in
           (("v", 23), ("s", 3), ("g", 11))]
  three = list(mixture.mix(parts, [.103, .026, .047], seed=1))
  assert set(three) == {f"{c}{i}" for c, n in (("v", 23), ("s", 3), ("g", 11)) for i in range(n)}
  assert sum(x[0] == "s" for x in three) / len(three) == pytest.approx(.026 / .176, abs=0.01)


@pytest.mark.parametrize("spec, sizes", [
    ("a=1,b=2", (5, 3001)),  # int(w * 100 / min) gave 99:199 here and one record never came
    ("a=1,b=3,c=7", (3, 2999, 10)),
    ("a=.026,b=.047,c=.103", (7, 1001, 13)),
])
def test_mix_non_round_weights_cover_every_record_in_the_configured_ratio(spec, sizes):
  weights = mixture.parse(spec)
  names = list(weights)
  parts = [grain.MapDataset.source([(n, i) for i in range(k)]) for n, k in zip(names, sizes)]
  items = list(mixture.mix(parts, list(weights.values()), seed=5))
  assert set(items) == {(n, i) for n, k in zip(names, sizes) for i in range(k)}
  counts = collections.Counter(n for n, _ in items)
  for n in names:  # the share is the configured one, up to the integer proportions (1%)
    assert counts[n] / len(items) == pytest.approx(weights[n], rel=0.01, abs=2 / len(items))
  # The limiting source is shown about once (grain's rounding may add one): no padded pass.
  limiting = max(range(len(names)), key=lambda k: sizes[k] / weights[names[k]])
  assert sizes[limiting] <= counts[names[limiting]] <= sizes[limiting] + 1


def small_config(data_dir, mixture_spec, **data):
  c = config_lib.base_config()
  c.model.vision.update(image_size=16, hidden=32, layers=1, heads=2, mlp_dim=64)
  c.model.llm.update(hidden=64, layers=1, heads=2, kv_heads=1, head_dim=32, mlp_dim=128)
  c.data.update(source="records", dir=data_dir, mixture=mixture_spec, pack_length=96,
                prefetch=0, **data)
  c.train.update(steps=1, batch_size=2, log_every=1, checkpoint_every=1, async_checkpoint=False)
  c.eval.update(batch_size=4, prompt_length=64)
  return c


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """Two imported SFT sources (LLaVA rows under two names, one with a test split) and a PT one."""
  tmp = tmp_path_factory.mktemp("imported")
  path, img = llava_fixture(tmp)
  out = str(tmp / "records")
  import_source("llava150k", [path], img, out)
  import_source("llava", [path], img, out, name="mine")
  import_source("llava", [path], img, out, name="mine", split="test", limit=3)
  shard = wds_shard(tmp / "00000.tar", [(f"k{i}", {"png": png_bytes((9 * i, 0, 0)),
                                                   "txt": b"a red square"}) for i in range(4)])
  import_source("webdataset", [shard], None, out, name="kale")
  return out


def test_import_then_one_training_step_on_the_mixture(imported, tmp_path):
  tok_path = str(tmp_path / "tokenizer.json")
  vocab.shapes_tokenizer().save(tok_path)
  c = small_config(imported, "llava150k=3,mine=1", tokenizer=tok_path)
  data = task.Task(c, str(tmp_path))
  model = vlm.VLM(tiny_vlm_config(vocab_size=data.tokenizer.vocab_size, layers=1))
  batch = next(data.train_iterator("I&T", model.cfg.tokens_per_image))
  params = jax.jit(lambda: nn.meta.unbox(model.init(
      jax.random.key(0), {k: batch[k] for k in tokens.MODEL_KEYS}, "mma")["params"]))()
  opt, _ = optimizer.make(c.optim, 10, params)
  step = jax.jit(step_lib.make_train_step(model, opt, "mma", 1,
                                       optimizer.trainable_mask(params, c.optim.freeze)))
  state, metrics = step(step_lib.TrainState(jnp.int32(0), params, opt.init(params)), batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_tokens"]) > 0
  head = lambda p: np.asarray(p["llm"]["lm_head"]["kernel"])
  assert np.abs(head(state.params) - head(params)).max() > 0


def test_pipeline_batches_of_imported_records(imported, tmp_path):
  c = small_config(imported, "mine=1")
  t = task.Task(c, str(tmp_path))
  batch = next(t.train_iterator("I&T", tokens_per_image=4))
  assert batch["images"].shape == (2, 4, 16, 16, 3)
  assert (batch["image_valid"].sum(1) == (batch["modality"] == 1).sum(1) // 4).all()
  assert batch["loss_mask"].any() and (batch["turn"] == 1).any()  # multi-turn kept whole
  table, record_of = prompts.split_table(t, "test")
  assert [r["answer"] for r in table.rows] == ["top left", "the second", "hi"]
  assert {r["category"] for r in table.rows} == {"mine"}
  assert record_of(0)["images"][0].shape == (16, 16, 3)  # decoded for the prompt encoder

  c = small_config(imported, "kale=1")
  c.stage = "pt"
  batch = next(task.Task(c, str(tmp_path)).train_iterator("I&T", tokens_per_image=4))
  assert batch["image_valid"].any() and batch["loss_mask"].any()
  # SFT on caption records is a bad record: an error naming it, or a counted skip.
  c.stage = "sft"
  with pytest.raises(ValueError, match=r"'webdataset-00000.tar/k\d' .* caption record but "
                     "config.stage='sft'"):
    next(task.Task(c, str(tmp_path)).train_iterator("I&T", tokens_per_image=4))


def test_config_errors_name_the_key(imported, tmp_path):
  c = small_config(imported, "")
  with pytest.raises(ValueError, match=r"config.data.mixture=''"):
    config_lib.validate(c)
  c.data.source = "files"
  with pytest.raises(ValueError, match=r"config.data.source='files'"):
    config_lib.validate(c)
  with pytest.raises(FileNotFoundError, match=r"config.data.mixture: no imported records in "
                     r".*absent"):
    task.Task(small_config(imported, "mine=1,absent=1"), str(tmp_path))
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"<pad>": 0, "<image>": 1, "<|end|>": 2, "<unk>": 3}, unk_token="<unk>"))
  words.save(str(tmp_path / "small.json"))
  with pytest.raises(ValueError, match=r"config.data.tokenizer=.*small.json.*'<s>'"):
    task.Task(small_config(imported, "mine=1", tokenizer=str(tmp_path / "small.json")),
              str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"config.data.tokenizer='nope.json'"):
    task.load_tokenizer("nope.json")
