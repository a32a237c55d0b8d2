"""Scoring of decoded answers."""
import pytest

from mma_jax import evaluate


def test_score_per_type_f1_and_chance():
  preds = ["Yes", "no", "yes", "two", "red.", "left"]
  answers = ["yes", "yes", "no", "two", "red", "right"]
  types = ["exist", "exist", "exist", "count", "attribute", "spatial"]
  m = evaluate.score(preds, answers, types, {"exist": 0.5, "count": 0.25, "attribute": 0.25,
                                             "spatial": 0.25})
  assert m["accuracy/exist"] == pytest.approx(1 / 3)
  assert m["accuracy/count"] == 1.0 and m["accuracy/attribute"] == 1.0
  assert m["accuracy/spatial"] == 0.0
  assert m["accuracy/all"] == pytest.approx(3 / 6)
  # exist: tp=1 (yes/yes), fp=1 (yes/no), fn=1 (no/yes) -> F1 = 2/4.
  assert m["f1/exist"] == pytest.approx(0.5)
  assert m["chance/count"] == 0.25
