"""The shapes benchmark as a TFDS builder written as ArrayRecord, read back via tfds.data_source.

    builder = prepare(data_dir, train_size=64, validation_size=16, test_size=16)
    source = ShapesSource("train", builder)     # random access: len(source), source[i]
    records = load_records("test", data_dir)    # the same, for the default sizes

Sizes, seed and image geometry live in the BuilderConfig; its name encodes them, so different
settings get different directories under data_dir and an existing one is reused, never rebuilt.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mma_jax.data import shapes

NAME = "mma_shapes"
FILE_FORMAT = "array_record"


@dataclasses.dataclass(eq=False)
class ShapesBuilderConfig(tfds.core.BuilderConfig):
  """Split sizes, generator seed and image geometry of one prepared copy of the benchmark."""
  train_size: int = 4800
  validation_size: int = 200
  test_size: int = 600
  seed: int = 0
  image_size: int = 32
  grid: int = 2

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}

  @property
  def shapes_config(self) -> shapes.ShapesConfig:
    return shapes.ShapesConfig(image_size=self.image_size, grid=self.grid)


def make_config(*, train_size: int = 4800, validation_size: int = 200, test_size: int = 600,
                seed: int = 0, image_size: int = 32, grid: int = 2) -> ShapesBuilderConfig:
  shapes.ShapesConfig(image_size=image_size, grid=grid)  # Fail early on a bad geometry.
  name = f"n{train_size}-{validation_size}-{test_size}_seed{seed}_px{image_size}_grid{grid}"
  return ShapesBuilderConfig(name=name, train_size=train_size, validation_size=validation_size,
                             test_size=test_size, seed=seed, image_size=image_size, grid=grid)


class MmaShapes(tfds.core.GeneratorBasedBuilder):
  """Procedurally drawn coloured shapes with captions and six question types."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [make_config()]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS' own lookup imports `importlib_resources` for package modules, which is not a
    # dependency here; the answer it would compute is this file.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "images": tfds.features.Sequence(tfds.features.Image(shape=(s, s, 3))),
            "conversations": tfds.features.Text(),  # JSON list of {"from", "value"}.
            "source": tfds.features.Text(),
            "question_type": tfds.features.Text(),
            "caption": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.sizes.items() if n > 0}

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    for record in shapes.generate(split, num_examples, seed=cfg.seed, config=cfg.shapes_config):
      yield record["id"], dict(record, conversations=json.dumps(record["conversations"]))


def prepare(data_dir: str, *, train_size: int = 4800, validation_size: int = 200,
            test_size: int = 600, seed: int = 0, image_size: int = 32,
            grid: int = 2) -> MmaShapes:
  """Builds the ArrayRecord files under data_dir once; later calls reuse them."""
  config = make_config(train_size=train_size, validation_size=validation_size,
                       test_size=test_size, seed=seed, image_size=image_size, grid=grid)
  if config.name == MmaShapes.BUILDER_CONFIGS[0].name:
    config = MmaShapes.BUILDER_CONFIGS[0]  # TFDS refuses a second object under a known name.
  builder = MmaShapes(data_dir=data_dir, config=config, file_format=FILE_FORMAT)
  builder.download_and_prepare()
  return builder


class _KeepEncoded(tfds.decode.SkipDecoding):
  """Leaves images as PNG bytes. SkipDecoding lacks the numpy path for Sequence features."""

  def decode_batch_example_np(self, serialized_example):
    return list(serialized_example)


def _text(x: Any) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def decode_image(data: bytes) -> np.ndarray:
  """PNG/JPEG bytes -> uint8[H, W, 3]. Raises whatever PIL raises on corrupt bytes."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class ShapesSource(Sequence):
  """Random access to one split, as records in the normalized schema (see shapes.py).

  decode_images=False leaves each image as its PNG bytes: the template decodes them and names the
  record on failure, which is what the training pipeline wants (skip_bad_records).
  """

  def __init__(self, split: str, builder: MmaShapes, *, decode_images: bool = True):
    self.split = split
    self.decode_images = decode_images
    self.config: ShapesBuilderConfig = builder.builder_config
    self._source = tfds.data_source(
        NAME, split=split, data_dir=builder.data_dir_root, download=False,
        decoders={"images": _KeepEncoded()},
        builder_kwargs={"config": builder.builder_config, "file_format": FILE_FORMAT})

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    raw = self._source[index]
    record = {
        "id": _text(raw["id"]),
        "images": [bytes(x) for x in raw["images"]],
        "conversations": json.loads(_text(raw["conversations"])),
        "source": _text(raw["source"]),
        "question_type": _text(raw["question_type"]),
        "caption": _text(raw["caption"]),
    }
    if self.decode_images:
      try:
        record["images"] = [decode_image(x) for x in record["images"]]
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"record {record['id']}: an image cannot be decoded ({e}); rebuild the "
                         "data directory or read it with decode_images=False and "
                         "skip_bad_records=True.") from e
    return record

  def __repr__(self) -> str:
    return f"ShapesSource({self.split!r}, {self.config.name}, {len(self)} records)"


def load_records(split: str, data_dir: str, *, decode_images: bool = True,
                 **sizes) -> ShapesSource:
  """prepare(data_dir, **sizes) (a no-op when built) and a source over `split`."""
  return ShapesSource(split, prepare(data_dir, **sizes), decode_images=decode_images)
