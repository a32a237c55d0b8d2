"""The VLM through behaviour: who can influence whom under each mask kind."""
import dataclasses
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax.models import flops, vit, vlm
from tests.layouts import model_batch, tiny_vlm_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def assert_same_gradients(model_a, model_b, params, batch, rtol=1e-5):
  """Both models' gradients of mean(logits^2) agree."""
  def loss(m, p):
    return jnp.mean(m.apply(p, batch, "mma")[0] ** 2)

  g1 = jax.jit(jax.grad(functools.partial(loss, model_a)))(params)
  g2 = jax.jit(jax.grad(functools.partial(loss, model_b)))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-6)


def test_remat_policies_give_the_same_gradients(model_and_params):
  model, params = model_and_params
  assert_same_gradients(model, vlm.VLM(tiny_vlm_config(remat="full")), params,
                        model_batch(LAYOUT))


# Two rows of 4 image slots: row 0 holds 2 images (2 examples), row 1 holds 1; 5 slots empty.
_ROW = "P" + "I" * 4 + "PPPAA"
_TWO_ROWS = [("P" + "I" * 4 + "PPPAA" + "P" + "I" * 4 + "PPA", "1" * 10 + "2" * 8),
             (_ROW + "." * 8, "1" * 10 + "0" * 8)]


def _two_rows():
  rows = [model_batch(kind, seg=seg, num_images=4, seed=i) for i, (kind, seg)
          in enumerate(_TWO_ROWS)]
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def _with_budget(per_row):
  cfg = tiny_vlm_config()
  return vlm.VLM(dataclasses.replace(
      cfg, vision=dataclasses.replace(cfg.vision, images_per_row=per_row)))


def _tower_runs(model, params, batch):
  """Logits, and the images each run of the vision tower got (recorded as it runs)."""
  runs = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, vit.ViT) and context.method_name == "__call__":
      jax.debug.callback(lambda x: runs.append(np.asarray(x)), args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    out = jax.jit(lambda p, b: model.apply(p, b, "mma")[0])(params, batch)
  return np.asarray(out), runs


@pytest.fixture(scope="module")
def two_rows_params():
  return jax.jit(vlm.VLM(tiny_vlm_config()).init, static_argnums=2)(
      jax.random.key(0), _two_rows(), "mma")


def test_empty_image_slots_are_not_encoded(two_rows_params):
  batch = _two_rows()
  real = np.concatenate([batch["images"][0, :2], batch["images"][1, :1]])
  full, runs = _tower_runs(_with_budget(0.0), two_rows_params, batch)
  assert [r.shape[0] for r in runs] == [8]  # every slot, empty ones too
  # 1.5 images per row: one pass of 3, exactly the real images, in order.
  out, runs = _tower_runs(_with_budget(1.5), two_rows_params, batch)
  assert len(runs) == 1
  np.testing.assert_array_equal(runs[0], real)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
  # A budget below the real count takes a second pass (its last image a never-read filler).
  out, runs = _tower_runs(_with_budget(1.0), two_rows_params, batch)
  assert [r.shape[0] for r in runs] == [2, 2]
  np.testing.assert_array_equal(np.concatenate(runs)[:3], real)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
  # No image at all: the tower never runs.
  text = dict(batch, modality=np.zeros_like(batch["modality"]))
  _, runs = _tower_runs(_with_budget(1.0), two_rows_params, text)
  assert runs == []


def test_encoding_used_slots_keeps_shapes_static_and_the_gradients(two_rows_params):
  batch = _two_rows()
  full, budget = _with_budget(0.0), _with_budget(1.5)

  def compiled_flops(model):
    return jax.jit(lambda p: model.apply(p, batch, "mma")[0]).lower(
        two_rows_params).compile().cost_analysis()["flops"]

  cfg = budget.cfg
  per_image = (flops.vision(cfg.vision) + flops.connector(cfg)).total
  saved = compiled_flops(full) - compiled_flops(budget)
  # 5 empty slots' tower + connector matmuls (XLA also counts this tiny tower's elementwise ops)
  assert 1.0 <= saved / ((8 - 3) * per_image) < 1.2
  assert_same_gradients(full, budget, two_rows_params, batch, rtol=1e-4)


_SHARDED = """
import dataclasses, jax, numpy as np
from mma_jax import sharding
from mma_jax.models import vlm
from tests.models import test_vlm as t
batch = {k: np.concatenate([v, v]) for k, v in t._two_rows().items()}
batch["modality"][2] = 0  # a row without images
with sharding.use(sharding.make_mesh((2, 2, 1)), sharding.make_rules()):
  full, budget = t._with_budget(0.0), t._with_budget(1.0)
  params = jax.jit(full.init, static_argnums=2)(jax.random.key(0), batch, "mma")
  out = [np.asarray(jax.jit(lambda p, b: m.apply(p, b, "mma")[0])(params, batch))
         for m in (full, budget)]
  print(vlm.batch_groups(4), np.abs(out[0] - out[1]).max())
"""


def test_used_slots_are_compacted_within_each_batch_shard():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_backend_optimization_level=0")
  out = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  groups, delta = out.stdout.split()
  assert int(groups) == 4 and float(delta) < 1e-5  # one group per data x fsdp shard
