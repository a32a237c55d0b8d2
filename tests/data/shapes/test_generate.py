"""The built-in shapes benchmark."""
import hashlib
import json

import numpy as np

from mma_jax.data import vocab
from mma_jax.data.shapes import generate


def test_deterministic_and_splits_differ():
  a = generate.make_example(3, "train", 17)
  b = generate.make_example(3, "train", 17)
  c = generate.make_example(3, "test", 17)
  assert a["conversations"] == b["conversations"]
  np.testing.assert_array_equal(a["images"][0], b["images"][0])
  assert a["id"] != c["id"]
  assert any(generate.make_example(3, "train", i)["caption"]
             != generate.make_example(3, "test", i)["caption"] for i in range(6))


def test_types_balanced_answers_valid_and_images_show_the_scene():
  records = [generate.make_example(0, "validation", i) for i in range(120)]
  types = [r["question_type"] for r in records]
  assert {t: types.count(t) for t in set(types)} == {t: 20 for t in generate.QUESTION_TYPES}
  exist = [r["conversations"][-1]["value"] for r in records if r["question_type"] == "exist"]
  assert exist.count("yes") == exist.count("no") == 10
  for r in records:
    assert r["conversations"][-1]["value"] in generate.ANSWERS[r["question_type"]]
    tags = sum(m["value"].count("<image>") for m in r["conversations"])
    assert tags == len(r["images"]) == (2 if r["question_type"] == "two_image" else 1)
  # The pixel at the centre of a described cell has the described colour.
  scene = [(0, "red", "square"), (3, "blue", "circle")]
  img = generate.draw(scene, 32)
  np.testing.assert_array_equal(img[8, 8], generate.COLORS["red"])
  np.testing.assert_array_equal(img[24, 24], generate.COLORS["blue"])
  np.testing.assert_array_equal(img[8, 24], [generate.BACKGROUND] * 3)
  assert generate.caption(scene) == "a red square at top left and a blue circle at bottom right ."


def test_chance_is_the_majority_answer_rate():
  recs = [{"question_type": "exist", "conversations": [{}, {"value": v}]}
          for v in ["yes", "yes", "no", "yes"]]
  assert generate.chance(recs) == {"exist": 0.75}


def test_easy_benchmark_is_unchanged():
  """The default (easy) records and tokenizer, bit for bit. The digests were computed with this
  same code from the generator and tokenizer as they were before the hard variant was added
  (commit f08706d), so adding difficulties cannot have moved a single record, pixel or id."""
  h = hashlib.sha256()
  for seed in (0, 3):
    for split in ("train", "validation", "test"):
      for i in range(12):
        for size in (16, 32):
          r = generate.make_example(seed, split, i, size)
          h.update(json.dumps({k: v for k, v in r.items() if k != "images"},
                              sort_keys=True).encode())
          for img in r["images"]:
            h.update(np.ascontiguousarray(img).tobytes())
  assert h.hexdigest() == "d0031f0221cc4133a60d6622669e76aadfff2b16af040e8152c621b43e0ccfcd"
  ids = sorted(vocab.shapes_tokenizer().tok.get_vocab().items(), key=lambda x: x[1])
  assert len(ids) == 58
  assert hashlib.sha256(json.dumps(ids).encode()).hexdigest() == (
      "4048de4aef7800079865e95f1322e33403f124f40fefba767e1b541edb044b5f")
  assert hashlib.sha256(" ".join(generate.vocabulary()).encode()).hexdigest() == (
      "69a5f5f305747aa97e2141e42534d066e01f1bf6e9ba9ffad3ee46ccd6cf31d3")
