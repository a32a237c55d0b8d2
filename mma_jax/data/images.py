"""Image preprocessing of the SigLIP processor (and AKI): RGB (transparency composited onto
white, as transformers does), bicubic resize to a square (the aspect ratio is not kept, nothing
is cropped), then x / 255 normalised with mean = std = 0.5,
i.e. x / 127.5 - 1 in [-1, 1]. Records keep uint8 pixels; the model input is made in one place.

Dynamic resolution (AnyRes, as LLaVA-NeXT): `tiles` picks the grid of tower-sized tiles from a
configured set that keeps most of the image's resolution, resizes the image into it keeping
its aspect ratio (padding the rest), and returns a global thumbnail first, then the tiles row
by row: uint8[1 + rows * cols, size, size, 3], one image of the record.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _rgb(image) -> Image.Image:
  """A PIL image, encoded bytes or uint8[H, W, C] array -> an RGB PIL image."""
  if isinstance(image, (bytes, bytearray)):
    image = Image.open(io.BytesIO(image))
  elif isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, image.convert("RGBA"))
  return image.convert("RGB")


def resize(image, size: int) -> np.ndarray:
  """A PIL image, encoded bytes or uint8[H, W, C] array -> uint8[size, size, 3]."""
  image = _rgb(image)
  if image.size != (size, size):
    image = image.resize((size, size), Image.BICUBIC)
  return np.asarray(image, np.uint8)


def best_grid(width: int, height: int, size: int, grids) -> tuple[int, int]:
  """(rows, cols) of `grids` whose canvas (cols * size x rows * size) keeps the most of the
  image's pixels when it is scaled to fit; ties go to the least padding (LLaVA-NeXT's rule)."""
  def score(grid):
    rows, cols = grid
    scale = min(cols * size / width, rows * size / height)
    kept = min(int(width * scale) * int(height * scale), width * height)
    return kept, -(cols * size * rows * size - kept)
  return max(grids, key=score)


def tiles(image, size: int, grids) -> np.ndarray:
  """AnyRes: uint8[1 + rows * cols, size, size, 3], the thumbnail then the tiles row-major.

  grids: (rows, cols) pairs to choose from, e.g. ((1, 2), (2, 1), (2, 2), (3, 3)).
  """
  image = _rgb(image)
  rows, cols = best_grid(image.width, image.height, size, grids)
  scale = min(cols * size / image.width, rows * size / image.height)
  w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
  canvas = Image.new("RGB", (cols * size, rows * size), (0, 0, 0))
  canvas.paste(image.resize((w, h), Image.BICUBIC), ((cols * size - w) // 2,
                                                      (rows * size - h) // 2))
  grid = np.asarray(canvas, np.uint8).reshape(rows, size, cols, size, 3).swapaxes(1, 2)
  return np.concatenate([resize(image, size)[None], grid.reshape(-1, size, size, 3)])


def prepare(image, size: int, grids=()) -> np.ndarray:
  """The model's view of one image: uint8[size, size, 3], or with AnyRes `grids` its tiles
  uint8[K, size, size, 3]; a clip uint8[N, H, W, 3] (video frames) is resized frame by frame,
  never tiled."""
  if isinstance(image, np.ndarray) and image.ndim == 4:
    return np.stack([resize(frame, size) for frame in image])
  return tiles(image, size, grids) if grids else resize(image, size)


def normalize(pixels: np.ndarray) -> np.ndarray:
  """uint8[..., 3] -> f32[..., 3] in [-1, 1] (SigLIP's rescale + normalise with 0.5 / 0.5)."""
  return pixels.astype(np.float32) / 127.5 - 1.0


def load(path: str, size: int, grids=()) -> np.ndarray:
  """An image file -> prepare(image, size, grids); errors name the file."""
  try:
    with Image.open(path) as img:
      return prepare(img, size, grids)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read image {path!r}: {e}") from None
