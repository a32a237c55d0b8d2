"""Video as a media span of frames: N frames sampled uniformly, each stored as an image.

A video's frames travel as images of the record whose paths are '<video>#frame<k>' (k: the
frame's index in the video); consecutive frames of one video belong to one <image> tag and
become one media span (modality image) of N x tokens_per_image tokens, so under MMA every frame
sees the question, as the tiles of an AnyRes image do. Sources: a folder of frame images (any
PIL format, in name order), an animated image PIL reads (GIF, APNG, WebP), or a video file
through PyAV when it is installed (`pip install av`).
"""
from __future__ import annotations

import io
import os
import re

from PIL import Image, ImageSequence

_FRAME = re.compile(r"^(?P<video>.+)#frame(?P<index>\d+)$")


def frame_indices(total: int, n: int) -> list[int]:
  """n frame indices spread uniformly over `total` frames: the middle of n equal parts."""
  if total <= 0:
    raise ValueError("the video has no frames")
  return [min(total - 1, int((k + 0.5) * total / n)) for k in range(n)]


def _png(image: Image.Image) -> bytes:
  out = io.BytesIO()
  image.convert("RGB").save(out, "PNG")
  return out.getvalue()


def read_frames(path: str, n: int) -> tuple[list[int], list[bytes]]:
  """(frame indices, encoded frames) of n frames sampled uniformly from the video at `path`."""
  if os.path.isdir(path):
    names = sorted(f for f in os.listdir(path) if not f.startswith("."))
    idx = frame_indices(len(names), n)
    out = []
    for i in idx:
      with open(os.path.join(path, names[i]), "rb") as f:
        out.append(f.read())
    return idx, out
  try:
    with Image.open(path) as img:
      frames = [frame.copy() for frame in ImageSequence.Iterator(img)]
  except (OSError, ValueError):
    frames = None  # not an image PIL reads: a video file
  if frames is None:
    try:
      import av  # pylint: disable=g-import-not-at-top (optional: PyAV decodes video files)
    except ImportError:
      raise ValueError(f"{path}: a video file needs PyAV (pip install av); or give a folder of "
                       "frame images or an animated GIF / WebP.") from None
    with av.open(path) as container:
      frames = [f.to_image() for f in container.decode(video=0)]
  idx = frame_indices(len(frames), n)
  return idx, [_png(frames[i]) for i in idx]


def frame_paths(video: str, indices) -> list[str]:
  """The record's image paths of a video's frames."""
  return [f"{video}#frame{i}" for i in indices]


def is_frame(path: str) -> bool:
  return _FRAME.match(path) is not None


def media_spans(paths) -> list[int]:
  """How many consecutive entries of a record's `image` paths each media span (<image> tag)
  takes: the frames of one video together, every other image alone."""
  spans, last = [], None
  for p in paths:
    m = _FRAME.match(p)
    video = m.group("video") if m else None
    if video is not None and video == last:
      spans[-1] += 1
    else:
      spans.append(1)
    last = video
  return spans
