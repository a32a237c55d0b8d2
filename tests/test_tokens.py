"""The token contract: DOT's phases, and batch shapes equal to what the pipeline yields."""
import numpy as np
import pytest

from mma_jax import tokens
from tests.train.test_loop import _rows


def test_phases_and_eval_order():
  assert tokens.phases("DOT") == ["T&I", "I&T"]
  assert tokens.phases("T&I") == ["T&I"] and tokens.eval_order("T&I") == "T&I"
  assert tokens.eval_order("DOT") == "I&T"  # a DOT model ends its training in I&T
  with pytest.raises(ValueError, match="config.data.order"):
    tokens.phases("X&Y")


def test_abstract_batch_is_what_the_pipeline_yields():
  batch = _rows(True, 2)  # a real Grain batch: 2 rows x 160 tokens, 4 image slots of 16 px
  shapes = tokens.abstract_batch(2, 160, 4, 16, train=True)
  assert set(batch) == set(shapes) == set(tokens.TRAIN_KEYS)
  for k, s in shapes.items():
    assert (batch[k].shape, np.dtype(batch[k].dtype)) == (s.shape, np.dtype(s.dtype)), k
  assert set(tokens.abstract_batch(2, 160, 4, 16)) == set(tokens.MODEL_KEYS)
  assert set(tokens.model_inputs(batch)) == set(tokens.MODEL_KEYS)


def test_roles_drive_the_loss_mask():
  batch = _rows(True, 2)
  # the loss of token i predicts token i + 1: only where that next token is a response
  nxt = np.roll(batch["role"], -1, axis=1)
  assert np.all(nxt[batch["loss_mask"]] == tokens.RESPONSE)
  assert np.all(batch["role"][batch["modality"] == tokens.IMAGE] == tokens.PROMPT)
