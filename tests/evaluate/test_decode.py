"""Decoding: cached logits equal the uncached forward; generate() against a naive loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import tokens
from mma_jax.evaluate import decode
from mma_jax.models import llm as llm_lib
from mma_jax.models import vlm
from tests.layouts import model_batch, tiny_vlm_config

IMG = "I" * 4
# Turn 0: two images and a question; answer; turn 1: a question with a third image; answer.
TURN0 = "P" + IMG + "P" + IMG + "PP" + "P"
ANSWER0 = "AAA"
TURN1 = "PP" + IMG + "P"
ANSWER1 = "AA"
LAYOUT = TURN0 + ANSWER0 + TURN1 + ANSWER1
TURNS = "0" * len(TURN0 + ANSWER0) + "1" * len(TURN1 + ANSWER1)


@pytest.fixture(scope="module")
def model_and_params():
  model = vlm.VLM(tiny_vlm_config())
  params = jax.jit(model.init, static_argnums=2)(
      jax.random.key(0), model_batch(LAYOUT, turn=TURNS), "mma")
  return model, params


def _two_rows(layout, turn=None, seg=None, num_images=None):
  rows = [model_batch(layout, seg=seg, turn=turn, num_images=num_images, seed=s) for s in (1, 2)]
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("kind", tokens.CACHE_CONSISTENT_KINDS)
def test_cached_decoding_matches_uncached_forward(model_and_params, kind):
  model, params = model_and_params
  full = _two_rows(LAYOUT, turn=TURNS)
  expected = np.asarray(model.apply(params, full, kind)[0])

  apply = jax.jit(model.apply, static_argnums=2)
  cache = llm_lib.Cache.empty(model.cfg.llm, 2, len(LAYOUT))
  a0, a1 = len(TURN0), len(TURN0 + ANSWER0)
  b0 = a1 + len(TURN1)
  # Prompts go in as chunks (each with its own images), answers one token at a time.
  chunks = [(0, a0, full["images"][:, :2])]
  chunks += [(i, i + 1, None) for i in range(a0, a1)]
  chunks += [(a1, b0, full["images"][:, 2:3])]
  chunks += [(i, i + 1, None) for i in range(b0, len(LAYOUT))]
  got = []
  for start, stop, images in chunks:
    chunk = {k: v[:, start:stop] for k, v in full.items() if k != "images"}
    chunk["images"] = images
    logits, cache = apply(params, chunk, kind, cache, start)
    got.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(got, axis=1), expected, rtol=1e-5, atol=1e-5)


def test_mma_conversation_is_not_what_a_cache_can_decode(model_and_params):
  """Trained on whole conversations, turn 0's image sees turn 1's question; decoded turn by
  turn it cannot: everything from the image on differs, everything before it matches."""
  model, params = model_and_params
  full = _two_rows(LAYOUT, turn=TURNS)
  whole = np.asarray(model.apply(params, full, "mma_conversation")[0])
  a0 = len(TURN0)
  cache = llm_lib.Cache.empty(model.cfg.llm, 2, len(LAYOUT))
  chunk = {k: v[:, :a0] for k, v in full.items() if k != "images"}
  chunk["images"] = full["images"][:, :2]
  first_turn, _ = model.apply(params, chunk, "mma_conversation", cache, 0)
  image = LAYOUT.index("I")
  np.testing.assert_allclose(np.asarray(first_turn)[:, :image], whole[:, :image], atol=1e-5)
  assert np.all(np.abs(np.asarray(first_turn)[:, image:] - whole[:, image:a0]).max(-1) > 1e-4)


def _naive_greedy(model, params, prompt, kind, steps):
  """Re-run the whole uncached forward for every new token (one row).

  The row lives in a fixed buffer whose unused tail is padding (segment 0, invisible), so the
  forward compiles once.
  """
  n = prompt["tokens"].shape[1]
  row = {k: np.pad(v, [(0, 0), (0, steps)]) if k != "images" else v for k, v in prompt.items()}
  forward = jax.jit(model.apply, static_argnums=2)
  out = []
  for t in range(steps):
    token = int(jnp.argmax(forward(params, row, kind)[0][0, n + t - 1]))
    out.append(token)
    extra = dict(tokens=token, segment_ids=1, modality=0, role=2, turn=row["turn"][0, n - 1],
                 positions=row["positions"][0, n + t - 1] + 1)
    for k, value in extra.items():
      row[k][0, n + t] = value
  return out


def _padded_prompts():
  long = model_batch("P" + IMG + "PPP" + "P", seed=3)
  short = model_batch("P" + IMG + "P" + "P" + "..", seed=4)
  batch = {k: np.concatenate([long[k], short[k]]) for k in long}
  return batch, [long, {k: v[:, :7] if k != "images" else v for k, v in short.items()}]


@pytest.mark.parametrize("kind", ["mma", "causal"])
def test_greedy_generate_matches_naive_loop_with_mixed_prompt_lengths(model_and_params, kind):
  model, params = model_and_params
  batch, rows = _padded_prompts()
  tokens, lengths = decode.generate(model, params, batch, kind=kind, max_new_tokens=5,
                                    eos_id=-1)
  for b, row in enumerate(rows):
    assert np.asarray(tokens[b]).tolist() == _naive_greedy(model, params, row, kind, 5)
  np.testing.assert_array_equal(lengths, [5, 5])


def test_each_row_stops_at_its_eos(model_and_params):
  model, params = model_and_params
  batch, _ = _padded_prompts()
  free, _ = decode.generate(model, params, batch, kind="mma", max_new_tokens=6, eos_id=-1)
  free = np.asarray(free)
  eos = int(free[0, 2])
  tokens, lengths = decode.generate(model, params, batch, kind="mma", max_new_tokens=6,
                                    eos_id=eos, pad_id=0)
  _assert_stops_at(free, tokens, lengths, (eos,))
  # Several stop ids (a template's end token and the checkpoint's eos): the first one ends it.
  stops = (eos, int(free[1, 1]))
  tokens, lengths = decode.generate(model, params, batch, kind="mma", max_new_tokens=6,
                                    eos_id=stops, pad_id=0)
  _assert_stops_at(free, tokens, lengths, stops)
  assert int(lengths[1]) <= 2


def _assert_stops_at(free, tokens, lengths, stops):
  for b in range(2):
    hits = np.flatnonzero(np.isin(free[b], stops))
    stop = hits[0] + 1 if hits.size else 6
    assert int(lengths[b]) == stop
    np.testing.assert_array_equal(np.asarray(tokens[b, :stop]), free[b, :stop])
    assert (np.asarray(tokens[b, stop:]) == 0).all()


def test_top_p_samples_only_from_the_nucleus():
  logits = jnp.log(jnp.array([[0.6, 0.3, 0.1]] * 512))
  draws = np.asarray(decode.sample(logits, jax.random.key(0), temperature=1.0, top_p=0.8))
  assert set(draws.tolist()) == {0, 1}            # 0.6 + 0.3 reach 0.8; 0.1 is cut
  assert 0.5 < np.mean(draws == 0) < 0.8          # renormalised 2:1
  greedy = decode.sample(logits, jax.random.key(0), temperature=0.0, top_p=1.0)
  assert (np.asarray(greedy) == 0).all()
  wide = np.asarray(decode.sample(logits, jax.random.key(1), temperature=1.0, top_p=1.0))
  assert set(wide.tolist()) == {0, 1, 2}
