"""The mask rule: literal matrices, a brute-force reading of the rule, dense == compact."""
import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import masks
from tests.layouts import matrix, vectors


def _dense(v, kind):
  return np.asarray(masks.dense_mask(v["segment_ids"], v["modality"], v["role"], v["turn"],
                                     kind))[0]


# One image (2 tokens) + question + assistant header + answer: the paper's M'.
ONE_IMAGE = ("PIIPPPAA", dict(), {
    "mma": """1....... 11.111.. 111111.. 1111.... 11111... 111111.. 1111111. 11111111""",
    "causal": """1....... 11...... 111..... 1111.... 11111... 111111.. 1111111. 11111111""",
    "prefix": """111111.. 111111.. 111111.. 111111.. 111111.. 111111.. 1111111. 11111111""",
})
# Two images of two tokens each: images stay causal among themselves, both see the question.
TWO_IMAGES = ("PIIIIPPA", dict(), {
    "mma": """1....... 11...11. 111..11. 1111.11. 1111111. 111111.. 1111111. 11111111""",
})
# Two turns: the image sees its own turn's prompt only, never the later question; under
# mma_conversation it also sees the later question (not the answer between them).
TWO_TURNS = ("PIPPAAPPA", dict(turn="000000111"), {
    "mma": """1........ 1111..... 111...... 1111..... 11111.... 111111... 1111111.. 11111111.
              111111111""",
    "mma_conversation": """1........ 1111..11. 111...... 1111..... 11111.... 111111... 1111111..
                           11111111. 111111111""",
    "prefix": """1111..... 1111..... 1111..... 1111..... 11111.... 111111... 11111111.
                 11111111. 111111111""",
})
# Packed row: two examples and padding; nothing crosses a segment, padding sees nothing.
PACKED = ("PIPAPIPA..", dict(seg="1111222200"), {
    "mma": """1......... 111....... 111....... 1111...... ....1..... ....111... ....111...
              ....1111.. .......... ..........""",
    "causal": """1......... 11........ 111....... 1111...... ....1..... ....11.... ....111...
                 ....1111.. .......... ..........""",
})
# Question before the image (T&I): the image already sees the question causally, and the
# assistant header after it through the MMA rectangle.
QUESTION_FIRST = ("PPIIPA", dict(), {
    "mma": """1..... 11.... 111.1. 11111. 11111. 111111""",
})


@pytest.mark.parametrize("layout", [ONE_IMAGE, TWO_IMAGES, TWO_TURNS, PACKED, QUESTION_FIRST],
                         ids=["one_image", "two_images", "two_turns", "packed", "question_first"])
def test_literal_matrices(layout):
  kind_str, kwargs, expected = layout
  v = vectors(kind_str, **kwargs)
  for kind, rows in expected.items():
    np.testing.assert_array_equal(_dense(v, kind), matrix(rows), err_msg=kind)


def brute_force(seg, mod, role, turn, kind):
  """The definition (mma_jax/masks.py), one pair at a time."""
  n = len(seg)
  out = np.zeros((n, n), bool)
  for i in range(n):
    for j in range(n):
      if seg[i] != seg[j] or seg[i] == 0:
        continue
      if kind == "causal":
        out[i, j] = j <= i
      elif kind == "mma":
        out[i, j] = j <= i or (mod[i] != 0 and role[i] == role[j] == 1 and mod[j] != mod[i]
                               and turn[i] == turn[j])
      elif kind == "mma_conversation":
        out[i, j] = j <= i or (mod[i] != 0 and role[i] == role[j] == 1 and mod[j] != mod[i])
      else:
        out[i, j] = j <= i or (role[i] == role[j] == 1 and turn[i] == turn[j])
  return out


@st.composite
def packed_rows(draw, length=24):
  """Random packed rows: examples of turns (prompt text/media mix, then a response), padding."""
  seg, mod, role, turn = [], [], [], []
  s = 0
  while len(seg) < length and draw(st.booleans() if s else st.just(True)):
    s += 1
    for t in range(draw(st.integers(1, 3))):
      for _ in range(draw(st.integers(1, 6))):
        seg.append(s); turn.append(t); role.append(1); mod.append(draw(st.sampled_from([0, 0, 1, 2])))
      for _ in range(draw(st.integers(0, 3))):
        seg.append(s); turn.append(t); role.append(2); mod.append(0)
  seg, mod, role, turn = (np.array((x + [0] * length)[:length], np.int32)
                          for x in (seg, mod, role, turn))
  role[seg == 0] = 0
  return seg, mod, role, turn


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(row=packed_rows(), kind=st.sampled_from(masks.KINDS))
def test_dense_matches_definition_and_compact_form(row, kind):
  seg, mod, role, turn = row
  expected = brute_force(seg, mod, role, turn, kind)
  args = [jnp.asarray(x)[None] for x in row]
  np.testing.assert_array_equal(np.asarray(masks.dense_mask(*args, kind))[0], expected)
  qg, kg = masks.group_ids(*args, kind, num_modalities=3)
  index = jnp.arange(len(seg))[None]
  compact = masks.compact_mask(args[0], index, qg, args[0], index, kg)
  np.testing.assert_array_equal(np.asarray(compact)[0], expected)


def test_unknown_kind_is_a_clear_error():
  v = vectors("PIA")
  with pytest.raises(ValueError, match="Unknown mask kind 'bidirectional'"):
    masks.dense_mask(v["segment_ids"], v["modality"], v["role"], v["turn"], "bidirectional")
