"""The normalized record: what every importer writes and the training pipeline reads.

LLaVA-like, extended for several images and captions (REFERENCE.md Part A §4):
  {"id": "vqav2-42", "image": ["train2014/COCO_train2014_000000000009.jpg"],
   "conversations": [{"from": "human", "value": "<image>\\nAnswer ... What is ...?"},
                     {"from": "gpt", "value": "two"}],
   "source": "vqav2", "task_type": "vqa", "caption": ""}
Rules: one <image> tag per entry of `image`, in order ([] for text-only) — except a video's
frames ('<video>#frame<k>', mma_jax.data.video), which share one tag; turns alternate
human, gpt and are kept whole (multi-turn); `image` paths are relative to the import's image
root. PT captions: task_type 'caption', `caption` set and `conversations` empty.

Stored, a record carries its images as encoded bytes (tfds_records); for training they are
decoded and resized to the model's square input by mma_jax.data.images (AKI / SigLIP: bicubic,
aspect ratio not kept).
"""
from __future__ import annotations

import functools
import io
import json
import os

import numpy as np
from PIL import Image

from mma_jax.data import chat
from mma_jax.data import images as images_lib
from mma_jax.data import video as video_lib

CAPTION = "caption"
# Reasons a row is skipped, as the import report counts them.
MISSING_IMAGE = "missing image"
UNDECODABLE_IMAGE = "undecodable image"
MALFORMED_ROW = "malformed row"


class BadRow(chat.BadRecord):
  """A source row that cannot become a record. `where` names the file and row; `reason` is one
  of the report's reasons."""

  def __init__(self, where: str, reason: str, detail: str):
    super().__init__(f"{where}: {reason}: {detail}")
    self.where, self.reason, self.detail = where, reason, detail


def validate(record: dict, where: str) -> dict:
  """The record if it follows the schema above, else BadRow(MALFORMED_ROW) naming `where`."""
  def bad(detail):
    raise BadRow(where, MALFORMED_ROW, detail)

  if not isinstance(record.get("id"), str) or not record["id"]:
    bad(f"'id' must be a non-empty string, got {record.get('id')!r}")
  for key in ("source", "task_type"):
    if not isinstance(record.get(key), str) or not record[key]:
      bad(f"record {record['id']!r}: {key!r} must be a non-empty string")
  images = record.get("image")
  if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
    bad(f"record {record['id']!r}: 'image' must be a list of relative paths, got {images!r}")
  conv = record.get("conversations")
  if not isinstance(conv, list) or not all(
      isinstance(m, dict) and isinstance(m.get("value"), str) for m in conv):
    bad(f"record {record['id']!r}: 'conversations' must be a list of {{from, value}} with "
        "string values")
  if record["task_type"] == CAPTION:
    if conv or not isinstance(record.get("caption"), str) or not record["caption"].strip():
      bad(f"record {record['id']!r}: a caption record needs a non-empty 'caption' and no "
          "conversations")
    return record
  try:
    # The training template's own rule.
    turns = chat.turns(record)
  except chat.BadRecord as e:
    bad(str(e))
  tags = sum(q.count(chat.IMAGE_TAG) + a.count(chat.IMAGE_TAG) for q, a in turns)
  media = len(video_lib.media_spans(images))  # a video's frames share one tag
  if tags != media or any(chat.IMAGE_TAG in a for _, a in turns):
    bad(f"record {record['id']!r} has {tags} {chat.IMAGE_TAG} tags for {media} images / "
        "videos; each needs exactly one tag, in a human turn")
  return record


def check_image(data: bytes, where: str, name: str, max_side: int = 0) -> bytes:
  """Encoded image bytes, verified by decoding them fully.

  max_side > 0 re-encodes images whose longer side exceeds it (aspect kept; JPEG, or PNG where
  there is transparency), so stored records stay small; 0 keeps the bytes as they are.
  """
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
  except Exception as e:  # PIL raises many types for corrupt files  # pylint: disable=broad-except
    raise BadRow(where, UNDECODABLE_IMAGE, f"{name}: {type(e).__name__}: {e}") from None
  if max_side <= 0 or max(img.size) <= max_side:
    return data
  scale = max_side / max(img.size)
  img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                   Image.BICUBIC)
  out = io.BytesIO()
  if img.mode in ("RGBA", "LA", "P"):
    img.save(out, "PNG")
  else:
    img.convert("RGB").save(out, "JPEG", quality=95)
  return out.getvalue()


@functools.lru_cache(maxsize=32)  # sources list several rows per image, usually together
def _read_checked(path: str, max_side: int) -> bytes:
  with open(path, "rb") as f:
    return check_image(f.read(), path, path, max_side)


def read_image(root: str, rel: str, where: str, max_side: int = 0) -> bytes:
  """The encoded bytes of the image at root/rel, or BadRow naming `where` and the path."""
  path = os.path.join(root, rel)
  if not os.path.isfile(path):
    raise BadRow(where, MISSING_IMAGE, f"{path} does not exist (image root {root!r}, "
                 f"record path {rel!r}); check --images")
  try:
    return _read_checked(path, max_side)
  except BadRow as e:
    raise BadRow(where, e.reason, e.detail) from None


def from_stored(raw: dict) -> dict:
  """A stored example (tfds_records: bytes text fields) -> the record, images still encoded."""
  text = lambda x: x.decode() if isinstance(x, bytes) else str(x)
  return {"id": text(raw["id"]), "image": [text(p) for p in raw["image"]],
          "images": list(raw["images"]), "conversations": json.loads(text(raw["conversations"])),
          "caption": text(raw["caption"]), "source": text(raw["source"]),
          "task_type": text(raw["task_type"])}


def with_pixels(record: dict, size: int, stage: str, grids=()) -> dict:
  """The record with its images decoded to uint8[size, size, 3] for chat.encode (AnyRes
  `grids`: each image's tiles, uint8[K, size, size, 3]; a video: its frames, uint8[N, size,
  size, 3], one media span).

  Raises chat.BadRecord (skippable with config.data.skip_bad_records) naming the record for an
  undecodable image or a record of the wrong kind for the stage.
  """
  is_caption = record["task_type"] == CAPTION
  if is_caption != (stage == "pt"):
    raise chat.BadRecord(
        f"Record {record['id']!r} (source {record['source']!r}) is a "
        f"{'caption' if is_caption else 'conversation'} record but config.stage={stage!r}; "
        "PT trains on captions (webdataset imports), SFT on conversations.")
  images = []
  for path, data in zip(record["image"], record["images"], strict=True):
    try:
      # a video's frames: one image each (never tiled), stacked into one span below
      images.append(images_lib.resize(data, size)[None] if video_lib.is_frame(path)
                    else images_lib.prepare(data, size, grids))
    except Exception as e:  # pylint: disable=broad-except
      raise chat.BadRecord(
          f"Record {record['id']!r} (source {record['source']!r}): image {path!r} cannot be "
          f"decoded ({type(e).__name__}: {e}). "
          "Re-import the source, or set config.data.skip_bad_records=True to skip such records "
          "with a count.") from None
  spans, grouped = video_lib.media_spans(record["image"]), []
  for n in spans:
    grouped.append(images[0] if n == 1 else np.concatenate(images[:n]))
    images = images[n:]
  return dict(record, images=grouped)
