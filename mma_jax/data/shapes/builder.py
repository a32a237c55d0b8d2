"""The shapes benchmark as a TFDS builder writing ArrayRecord, read by Grain as a data source."""
from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mma_jax import logs
from mma_jax.data.shapes import generate


def dials_tag(dials: generate.Dials) -> str:
  """What a config name adds for the hard benchmark's dials that are not the defaults: '' at the
  defaults, else e.g. '_o3-8_g5_d0.5_q0146' (objects, grid, distractor share, question types
  by their index in HARD_QUESTION_TYPES, turns)."""
  default, parts = generate.Dials(), []
  if (dials.objects_min, dials.objects_max) != (default.objects_min, default.objects_max):
    parts.append(f"o{dials.objects_min}-{dials.objects_max}")
  if dials.grid != default.grid:
    parts.append(f"g{dials.grid}")
  if dials.distractors != default.distractors:
    parts.append(f"d{dials.distractors:g}")
  if dials.question_types != default.question_types:
    parts.append("q" + "".join(str(generate.HARD_QUESTION_TYPES.index(t))
                               for t in dials.question_types))
  if dials.turns != default.turns:
    parts.append(f"t{dials.turns}")
  return "".join(f"_{p}" for p in parts)


class ShapesConfig(tfds.core.BuilderConfig):
  """Sizes, generator seed, difficulty and its dials; the name encodes them so they never share
  files (the easy benchmark keeps its original names, the hard one's start with 'hard_' and
  name only the dials that are not the defaults, so the default hard names are unchanged)."""

  def __init__(self, *, train_size: int, validation_size: int, test_size: int, seed: int,
               image_size: int, difficulty: str = "easy", frames: int = 0,
               dials: generate.Dials = generate.Dials()):
    prefix = "" if generate.check_difficulty(difficulty) == "easy" else f"{difficulty}_"
    suffix = f"_f{frames}" if frames > 1 else ""  # clips: each image a few frames
    super().__init__(
        name=f"{prefix}s{seed}_px{image_size}_n{train_size}-{validation_size}-{test_size}"
             f"{suffix}{dials_tag(dials)}", version=tfds.core.Version("1.0.0"))
    self.dials = dials
    self.frames = frames
    self.sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    self.seed = seed
    self.image_size = image_size
    self.difficulty = difficulty


class MmaShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes with captions and question types per difficulty (easy: six, hard: seven; see
  mma_jax.data.shapes.generate)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "images": tfds.features.Sequence(tfds.features.Image(shape=(size, size, 3))),
        "conversations": tfds.features.Text(),  # JSON list of {"from", "value"}
        "source": tfds.features.Text(),
        "question_type": tfds.features.Text(),
        "caption": tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in self.builder_config.sizes}

  def _generate_examples(self, split):
    cfg = self.builder_config
    for i in range(cfg.sizes[split]):
      r = generate.make_example(cfg.seed, split, i, cfg.image_size, cfg.difficulty, cfg.frames,
                                cfg.dials)
      # a clip's frames are stored one after another in the images sequence
      images = np.concatenate(r["images"]) if cfg.frames > 1 else np.stack(r["images"])
      yield i, dict(r, images=images, conversations=json.dumps(r["conversations"]))


def builder(data_dir: str, *, train_size: int, validation_size: int, test_size: int,
            seed: int = 0, image_size: int = 32, difficulty: str = "easy",
            frames: int = 0, dials: generate.Dials = generate.Dials()) -> MmaShapes:
  """The builder, prepared (ArrayRecord files written) once per data_dir, size, difficulty,
  dials and clip length (frames > 1: every image a clip)."""
  cfg = ShapesConfig(train_size=train_size, validation_size=validation_size,
                     test_size=test_size, seed=seed, image_size=image_size, difficulty=difficulty,
                     frames=frames, dials=dials)
  b = MmaShapes(config=cfg, data_dir=data_dir, file_format="array_record")
  if not b.is_prepared():
    logging.info("Writing the %s shapes benchmark (%d / %d / %d train / validation / test "
                 "records, %d px) to %s.", difficulty, train_size, validation_size, test_size,
                 image_size, b.data_dir)
    if not logs.verbose():
      tfds.disable_progress_bar()
    with logs.quiet_stdout():
      b.download_and_prepare()
  return b


def decode_record(raw, frames: int = 0) -> dict:
  """A TFDS element (bytes for text, uint8[N, H, W, 3] images) -> the normalized record;
  frames > 1: the images regrouped into clips uint8[frames, H, W, 3]."""
  text = lambda x: x.decode() if isinstance(x, bytes) else str(x)
  images = list(raw["images"])
  if frames > 1:
    images = [np.stack(images[k:k + frames]) for k in range(0, len(images), frames)]
  return {"id": text(raw["id"]), "images": images,
          "conversations": json.loads(text(raw["conversations"])), "source": text(raw["source"]),
          "question_type": text(raw["question_type"]), "caption": text(raw["caption"])}
