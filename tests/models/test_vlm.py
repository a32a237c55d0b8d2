"""The VLM through behaviour: who can influence whom under each mask kind."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax.models import vlm
from tests.layouts import model_batch, tiny_vlm_config

# System/BOS, one image (4 tokens), a question, the assistant header, an answer.
LAYOUT = "P" + "I" * 4 + "PPP" + "P" + "AAA"
IMAGE = slice(1, 5)
QUESTION = 6          # a question token after the image
ANSWER = 10           # the second answer token


@pytest.fixture(scope="module")
def model_and_params():
  model = vlm.VLM(tiny_vlm_config())
  params = jax.jit(model.init, static_argnums=2)(jax.random.key(0), model_batch(LAYOUT), "mma")
  return model, params


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda p, b, kind: model.apply(p, b, kind)[0], static_argnums=2)


def logits(model, params, batch, kind):
  return np.asarray(_forward(model)(params, batch, kind))[0]


def _with_token(batch, index, token):
  tokens = batch["tokens"].copy()
  tokens[0, index] = token
  return dict(batch, tokens=tokens)


def test_mma_image_outputs_depend_on_the_question_causal_do_not(model_and_params):
  model, params = model_and_params
  base = model_batch(LAYOUT)
  changed = _with_token(base, QUESTION, (base["tokens"][0, QUESTION] + 7) % 59 + 5)
  for kind, should_change in [("mma", True), ("prefix", True), ("causal", False)]:
    delta = np.abs(logits(model, params, base, kind) - logits(model, params, changed, kind))
    image_delta = delta[IMAGE].max()
    if should_change:
      assert image_delta > 1e-4, kind
    else:
      assert image_delta == 0.0, kind
    # Text rows stay causal under mma and causal (prefix opens the whole prompt).
    if kind != "prefix":
      assert delta[0].max() == 0.0, kind


@pytest.mark.parametrize("kind", ["causal", "mma", "prefix"])
def test_no_answer_leakage(model_and_params, kind):
  model, params = model_and_params
  base = model_batch(LAYOUT)
  changed = _with_token(base, ANSWER, (base["tokens"][0, ANSWER] + 3) % 59 + 5)
  delta = np.abs(logits(model, params, base, kind) - logits(model, params, changed, kind))
  assert delta[:ANSWER].max() == 0.0
  assert delta[ANSWER:].max() > 1e-4  # the change is visible from where it happens on


@pytest.mark.parametrize("kind", ["causal", "mma", "prefix"])
def test_packed_examples_are_isolated(model_and_params, kind):
  model, params = model_and_params
  one = LAYOUT
  row = one + one + ".."
  seg = "1" * len(one) + "2" * len(one) + "00"
  base = model_batch(row, seg=seg, num_images=3)
  n = len(one)
  # Change the second example's text and image: the first example must not move.
  changed = _with_token(base, n + QUESTION, (base["tokens"][0, n + QUESTION] + 5) % 59 + 5)
  images = base["images"].copy()
  images[0, 1] = -images[0, 1]
  changed["images"] = images
  delta = np.abs(logits(model, params, base, kind) - logits(model, params, changed, kind))
  assert delta[:n].max() == 0.0
  assert delta[n:2 * n].max() > 1e-4
  # The padded third image slot is never read; padding rows stay finite.
  padded_slot = dict(base, images=base["images"].copy())
  padded_slot["images"][0, 2] = 0.3
  np.testing.assert_array_equal(logits(model, params, base, kind),
                                logits(model, params, padded_slot, kind))
  assert np.isfinite(logits(model, params, base, kind)).all()


def test_images_fill_placeholders_in_order():
  # Two images of 2 tokens each; token features are (image, token) codes.
  image_embeds = jnp.arange(2 * 2 * 1, dtype=jnp.float32).reshape(1, 2, 2, 1) + 100
  modality = jnp.array([[0, 1, 1, 0, 1, 1, 0]])
  text = jnp.zeros((1, 7, 1))
  out = vlm.scatter_images(text, modality, image_embeds)[0, :, 0]
  np.testing.assert_array_equal(out, [0, 100, 101, 0, 102, 103, 0])


def test_perceiver_connector_and_llm_variants_run():
  cfg = tiny_vlm_config("perceiver", qkv_bias=True, tie_embeddings=True)
  assert cfg.tokens_per_image == 3
  model = vlm.VLM(cfg)
  batch = model_batch("P" + "I" * 3 + "PPA", tokens_per_image=3)
  params = jax.jit(model.init, static_argnums=2)(jax.random.key(1), batch, "mma")
  out, _ = jax.jit(model.apply, static_argnums=2)(params, batch, "mma")
  assert out.shape == (1, 7, 64) and np.isfinite(np.asarray(out)).all()
  flat = jax.tree_util.tree_leaves_with_path(params)
  names = {jax.tree_util.keystr(p) for p, _ in flat}
  assert any("latents" in n for n in names) and not any("lm_head" in n for n in names)
  assert any("'q']['bias'" in n for n in names)


def test_remat_policies_give_the_same_gradients(model_and_params):
  model, params = model_and_params
  batch = model_batch(LAYOUT)
  remat_model = vlm.VLM(tiny_vlm_config(remat="full"))

  def loss(m, p):
    return jnp.mean(m.apply(p, batch, "mma")[0] ** 2)

  g1 = jax.jit(jax.grad(functools.partial(loss, model)))(params)
  g2 = jax.jit(jax.grad(functools.partial(loss, remat_model)))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
