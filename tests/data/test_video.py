"""Video: frames sampled uniformly from a GIF or a frame folder, imported from LLaVA-Video-style
JSON, one media span per video that, under MMA, reads the question."""
import json

import jax.numpy as jnp
import numpy as np
from PIL import Image

from mma_jax import masks
from mma_jax.data import chat, records, tfds_records, video, vocab
from mma_jax.data.importers import import_source

COLOURS = [(255 * (k % 2), 32 * k, 255 - 32 * k) for k in range(8)]  # frame k's colour


def test_frames_are_spread_uniformly_and_spans_group_a_videos_frames():
  assert video.frame_indices(10, 4) == [1, 3, 6, 8]
  assert video.frame_indices(3, 4) == [0, 1, 1, 2]  # fewer frames than asked: repeats
  paths = ["a.jpg"] + video.frame_paths("clip.gif", [0, 2, 4]) + ["b.jpg"] + \
      video.frame_paths("d/frames", [1, 3])
  assert video.media_spans(paths) == [1, 3, 1, 2]


def _fixtures(root):
  frames = [Image.new("RGB", (24, 16), c) for c in COLOURS]
  frames[0].save(root / "clip.gif", save_all=True, append_images=frames[1:], duration=40)
  (root / "frames").mkdir()
  for k, f in enumerate(frames[:6]):
    f.save(root / "frames" / f"{k:03d}.png")
  rows = [{"id": 1, "video": "clip.gif", "conversations": [
              {"from": "human", "value": "<image>\nwhat happens ?"}, {"from": "gpt", "value": "a"}]},
          {"id": 2, "video": "frames", "conversations": [  # no tag: one is added
              {"from": "human", "value": "what colour is it ?"}, {"from": "gpt", "value": "b"}]},
          {"id": 3, "video": "missing.mp4", "conversations": [
              {"from": "human", "value": "<image>\n?"}, {"from": "gpt", "value": "c"}]}]
  (root / "videos.json").write_text(json.dumps(rows))


def test_import_sample_and_encode_one_media_span_that_reads_the_question(tmp_path):
  _fixtures(tmp_path)
  report = import_source("llava_video", [str(tmp_path / "videos.json")], str(tmp_path),
                         str(tmp_path / "out"), skip_bad=True, frames=4)
  assert report.written == 2 and report.skipped[records.MISSING_IMAGE] == 1
  recs = {r["id"]: r for r in tfds_records.read_all(str(tmp_path / "out" / "llava_video"),
                                                     "train")}
  gif = records.with_pixels(recs["llava_video-1"], 16, "sft")
  assert recs["llava_video-1"]["image"] == video.frame_paths("clip.gif", [1, 3, 5, 7])
  assert len(gif["images"]) == 1 and gif["images"][0].shape == (4, 16, 16, 3)
  for frame, k in zip(gif["images"][0], [1, 3, 5, 7]):  # in order, the sampled frames
    np.testing.assert_allclose(frame[8, 8], COLOURS[k], atol=3)
  folder = records.with_pixels(recs["llava_video-2"], 16, "sft")
  assert folder["images"][0].shape == (4, 16, 16, 3)
  assert folder["conversations"][0]["value"].startswith("<image>\n")

  tok = vocab.shapes_tokenizer()
  ex = chat.encode(gif, tok, tokens_per_image=2, image_size=16)
  media = np.flatnonzero(ex["modality"] == 1)
  assert len(media) == 4 * 2 and np.all(np.diff(media) == 1)  # one span of every frame
  ids = [jnp.asarray(ex[k])[None] for k in ("modality", "role", "turn")]
  seg = jnp.ones_like(ids[0])
  question = np.flatnonzero((ex["role"] == 1) & (ex["modality"] == 0))
  question = question[question > media[-1]]
  mma = np.asarray(masks.dense_mask(seg, *ids, "mma"))[0]
  causal = np.asarray(masks.dense_mask(seg, *ids, "causal"))[0]
  assert mma[np.ix_(media, question)].all() and not causal[np.ix_(media, question)].any()
