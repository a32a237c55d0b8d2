"""The built-in shapes benchmark."""
import numpy as np

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
