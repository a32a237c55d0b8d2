"""LLaVA-Video-style JSON (LLaVA-Video-178K, VideoChatGPT, ...) -> records with video frames.

Rows: {id, video: path relative to --images (a video file, an animated GIF / WebP, or a folder
of frame images), conversations: [{from, value}]}. --frames N (default 8) frames are sampled
uniformly from each video and stored as the record's images, '<video>#frame<k>'
(mma_jax.data.video): one media span behind the row's <image> tag (added at the start of the
first human turn when the row has none; LLaVA-Video writes '<image>' for its videos too).
"""
from __future__ import annotations

import os

from mma_jax.data import video as video_lib
from mma_jax.data.chat import IMAGE_TAG
from mma_jax.data.importers.common import MALFORMED_ERRORS, Example, rows
from mma_jax.data.importers.llava import SPEAKERS
from mma_jax.data.records import MALFORMED_ROW, MISSING_IMAGE, UNDECODABLE_IMAGE, BadRow

DEFAULT_FRAMES = 8


def llava_video(inputs, images, split, source, frames: int = DEFAULT_FRAMES):
  """--input FILE.json | FILE.jsonl, one or more; --images: the root the video paths are
  relative to; frames: how many to sample per video."""
  del split
  for path in inputs:
    for where, key, row in rows(path):
      if isinstance(row, BadRow):
        yield row
        continue
      try:
        rel = row["video"]
        conv = [{"from": SPEAKERS.get(m["from"], m["from"]), "value": m["value"]}
                for m in row["conversations"]]
        rid = f"{source}-{row.get('id', key)}"
      except MALFORMED_ERRORS as e:
        yield BadRow(where, MALFORMED_ROW, f"{type(e).__name__}: {e}")
        continue
      full = os.path.join(images, rel)
      if not os.path.exists(full):
        yield BadRow(where, MISSING_IMAGE, f"{full} does not exist (video root {images!r}, "
                     f"record path {rel!r}); check --images")
        continue
      try:
        indices, data = video_lib.read_frames(full, frames)
      except (OSError, ValueError) as e:
        yield BadRow(where, UNDECODABLE_IMAGE, f"{full}: {e}")
        continue
      if conv and not any(IMAGE_TAG in m["value"] for m in conv):
        conv[0] = dict(conv[0], value=f"{IMAGE_TAG}\n" + conv[0]["value"])
      yield Example(where, {"id": rid, "image": video_lib.frame_paths(rel, indices),
                            "conversations": conv, "source": source,
                            "task_type": "conversation"}, data)
