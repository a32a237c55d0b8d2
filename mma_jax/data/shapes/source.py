"""The shapes benchmark generated on the fly: a Grain random-access source, no files.

config.data.on_the_fly = True reads every split of the built-in benchmark from here instead of
the TFDS ArrayRecord files (builder), so a large training set costs no disk. Record i is
generate.make_example(seed, split, i, ...): the record the TFDS builder stores under key i,
as builder.decode_record reads it back (TFDS orders its files its own way, so the same records
come at other indices there).
"""
from __future__ import annotations

from mma_jax.data.shapes import generate


class ShapesSource:
  """len(source) records of a split, source[i] generated when asked for; picklable (plain
  attributes) for Grain's worker processes.

  source[i]: the normalized record, {"id", "images": [uint8[H, W, 3]] (frames > 1:
  uint8[frames, H, W, 3] clips), "conversations", "source", "question_type", "caption"}."""

  def __init__(self, split: str, size: int, *, seed: int = 0, image_size: int = 32,
               difficulty: str = "easy", frames: int = 0,
               dials: generate.Dials = generate.Dials()):
    if split not in generate.SPLITS:
      raise ValueError(f"Unknown split {split!r}; use one of {tuple(generate.SPLITS)}.")
    self.split, self.size, self.seed = split, size, seed
    self.image_size, self.frames = image_size, frames
    self.difficulty = generate.check_difficulty(difficulty)
    self.dials = dials

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict:
    index = int(index)  # Grain may hand numpy integers
    if not 0 <= index < self.size:
      raise IndexError(f"Record {index} of a {self.size}-record {self.split} split.")
    return generate.make_example(self.seed, self.split, index, self.image_size, self.difficulty,
                                 self.frames, self.dials)

  def __repr__(self) -> str:
    return (f"ShapesSource({self.split!r}, {self.size}, seed={self.seed}, "
            f"image_size={self.image_size}, difficulty={self.difficulty!r}, "
            f"frames={self.frames}, dials={self.dials})")
