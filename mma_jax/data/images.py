"""Image preprocessing of the SigLIP processor (and AKI): RGB (transparency composited onto
white, as transformers does), bicubic resize to a square (the aspect ratio is not kept, nothing
is cropped), then x / 255 normalised with mean = std = 0.5,
i.e. x / 127.5 - 1 in [-1, 1]. Records keep uint8 pixels; the model input is made in one place.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def resize(image, size: int) -> np.ndarray:
  """A PIL image, encoded bytes or uint8[H, W, C] array -> uint8[size, size, 3]."""
  if isinstance(image, (bytes, bytearray)):
    image = Image.open(io.BytesIO(image))
  elif isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, image.convert("RGBA"))
  image = image.convert("RGB")
  if image.size != (size, size):
    image = image.resize((size, size), Image.BICUBIC)
  return np.asarray(image, np.uint8)


def normalize(pixels: np.ndarray) -> np.ndarray:
  """uint8[..., 3] -> f32[..., 3] in [-1, 1] (SigLIP's rescale + normalise with 0.5 / 0.5)."""
  return pixels.astype(np.float32) / 127.5 - 1.0


def load(path: str, size: int) -> np.ndarray:
  """An image file -> uint8[size, size, 3]; errors name the file."""
  try:
    with Image.open(path) as img:
      return resize(img, size)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read image {path!r}: {e}") from None
