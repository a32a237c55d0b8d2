"""The mechanism pictures: image hidden states ignore the question under causal, not under MMA."""
import os

import jax
import numpy as np
from clu import metric_writers

from mma_jax import mechanism
from mma_jax.data import vocab
from mma_jax.data.shapes import generate
from mma_jax.models import vlm
from tests.layouts import tiny_vlm_config


def test_pictures_causal_identical_mma_question_dependent(tmp_path):
  tok = vocab.shapes_tokenizer()
  model = vlm.VLM(tiny_vlm_config(vocab_size=tok.vocab_size))
  records = [generate.make_example(0, "test", i, image_size=16) for i in range(8)]
  pairs = mechanism.question_pairs(records, 2)
  assert all(a["question_type"] != b["question_type"] and a["images"] is b["images"]
             for a, b in pairs)
  batch = mechanism.prompt_batch(pairs, tok, model.cfg.tokens_per_image, 16)
  params = jax.jit(lambda: model.init(jax.random.key(0), batch, "causal")["params"])()

  runs = {"mma": (model, params, "mma"), "causal": (model, params, "causal")}
  traced = mechanism.traces(runs, pairs, tok)
  t = traced[1]["mma"]

  # The layer-by-layer trace is the model's own forward pass.
  head = lambda m, x: m.llm.lm_head(m.llm.final_norm(x))
  ours, logits = jax.jit(lambda p, b, h: (model.apply({"params": p}, h, method=head),
                                          model.apply({"params": p}, b, "mma")[0]))(
                                              params, batch, t.hidden[-1])
  np.testing.assert_allclose(ours, logits, atol=1e-4)
  np.testing.assert_allclose(np.asarray(t.attention).sum(-1)[:, batch["segment_ids"] != 0], 1.0,
                             atol=1e-5)
  # Image rows put no attention on the question under causal, some under mma.
  att = {k: mechanism.question_attention(traced[1][k].attention, batch, 0) for k in runs}
  assert np.all(att["causal"] == 0.0) and np.all(att["mma"].sum(-1) > 0)

  out = str(tmp_path / "mech")
  writer = metric_writers.create_default_writer(out)
  result = mechanism.pictures(runs, pairs, tok, out, writer, traced)
  causal, mma = np.array(result["drift"]["causal"]), np.array(result["drift"]["mma"])
  assert causal.shape == mma.shape == (model.cfg.llm.layers + 1, 2)
  assert np.all(causal == 0.0)                         # exactly identical under causal
  assert np.all(mma[0] == 0.0) and np.all(mma[1:] > 1e-6)  # the question reaches them under mma
  for name in ("drift.png", "attention_0.png", "attention_1.png", "mechanism.json"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  with open(os.path.join(out, "drift.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(out))


def test_question_pairs_on_the_hard_benchmark():
  records = [generate.make_example(0, "test", i, image_size=64, difficulty="hard")
             for i in range(6)]
  pairs = mechanism.question_pairs(records, 3)
  assert len(pairs) == 3
  for a, b in pairs:
    assert a["question_type"] != b["question_type"] and a["images"] is b["images"]
    assert a["conversations"][0]["value"] != b["conversations"][0]["value"]
