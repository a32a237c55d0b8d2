"""AnyRes tiling: the grid LLaVA-NeXT's rule picks, tile order, and every tile of an image as
one media span that, under MMA, reads the question."""
import jax
import numpy as np
import pytest

from mma_jax.data import chat, images, vocab
from mma_jax.models import vlm
from tests.layouts import tiny_vlm_config

GRIDS = ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2), (3, 3))
TOK = vocab.shapes_tokenizer()


@pytest.mark.parametrize("width,height,want", [
    (60, 20, (1, 2)),    # wide: two tiles side by side keep every pixel, with the least padding
    (20, 60, (2, 1)),    # tall
    (100, 40, (3, 3)),   # no canvas keeps it whole: the one keeping the most pixels
    (64, 64, (2, 2)),    # square at twice the tile size
    (200, 200, (3, 3)),  # larger than any canvas: the biggest
    (20, 20, (1, 1)),    # small: every canvas keeps it whole, the least padding wins
])
def test_best_grid_keeps_the_most_resolution_with_the_least_padding(width, height, want):
  assert images.best_grid(width, height, 32, GRIDS) == want


def test_thumbnail_first_then_tiles_row_major():
  # a 2 x 2 checkerboard of colours at twice the tile size: each tile is one colour
  colours = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], np.uint8)
  img = np.repeat(np.repeat(colours, 32, axis=0), 32, axis=1)  # uint8[64, 64, 3]
  t = images.tiles(img, 32, GRIDS)
  assert t.shape == (5, 32, 32, 3) and t.dtype == np.uint8
  np.testing.assert_array_equal(t[0], images.resize(img, 32))  # the global thumbnail
  for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
    np.testing.assert_array_equal(t[1 + k], np.broadcast_to(colours[r, c], (32, 32, 3)))
  np.testing.assert_array_equal(images.prepare(img, 32), images.resize(img, 32))  # no grids


def _record(question, image):
  return {"id": "tiled", "images": [image],
          "conversations": [{"from": "human", "value": f"{chat.IMAGE_TAG}\n{question}"},
                            {"from": "gpt", "value": "one"}]}


def test_every_tile_is_one_media_span_that_reads_the_question_under_mma():
  cfg = tiny_vlm_config()  # 16 px tiles of 4 tokens
  rng = np.random.default_rng(0)
  tiled = images.tiles(rng.integers(0, 256, (16, 40, 3), dtype=np.uint8), 16, GRIDS)
  assert tiled.shape[0] == 1 + 3  # a 1 x 3 grid and the thumbnail
  ex = [chat.encode(_record(q, tiled), TOK, tokens_per_image=4, image_size=16)
        for q in ("how many shapes are there ?", "what color is the shape at top left ?")]
  media = np.flatnonzero(ex[0]["modality"] == 1)
  assert len(media) == 4 * 4 and np.all(np.diff(media) == 1)  # one contiguous span
  np.testing.assert_array_equal(ex[0]["images"], tiled)
  model = vlm.VLM(cfg)
  batch = lambda e: {k: e[k][None] for k in ("tokens", "modality", "role", "turn", "positions")} | {
      "segment_ids": np.ones_like(e["tokens"])[None],
      "images": images.normalize(e["images"])[None]}
  params = model.init(jax.random.key(0), batch(ex[0]), "mma")
  # Same length prompts up to the question, which differs: compare the image rows' outputs.
  for kind, differs in (("mma", True), ("causal", False)):
    out = [np.asarray(model.apply(params, batch(e), kind)[0])[0, media] for e in ex]
    moved = np.abs(out[0] - out[1]).max(axis=-1) > 1e-6  # per image token
    assert moved.all() if differs else not moved.any(), kind
