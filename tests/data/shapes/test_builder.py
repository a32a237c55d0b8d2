"""The TFDS builder writes ArrayRecord files that a tfds data source reads back."""
import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from mma_jax.data.shapes import builder as shapes_builder
from mma_jax.data.shapes import generate


def test_builder_writes_array_record_and_data_source_reads_the_records(tmp_path):
  b = shapes_builder.builder(str(tmp_path), train_size=8, validation_size=3, test_size=3, seed=5,
                          image_size=16)
  assert glob.glob(os.path.join(b.data_dir, "*.array_record*"))
  source = tfds.data_source("mma_shapes", split="train",
                            data_dir=str(tmp_path), builder_kwargs={"config": b.builder_config})
  assert len(source) == 8
  ids = set()
  for i in range(len(source)):  # TFDS stores examples in its own order: match them by id
    got = shapes_builder.decode_record(source[i])
    ids.add(got["id"])
    want = generate.make_example(5, "train", int(got["id"].rsplit("-", 1)[1]), 16)
    assert got["id"] == want["id"] and got["conversations"] == want["conversations"]
    for g, w in zip(got["images"], want["images"], strict=True):
      np.testing.assert_array_equal(g, w)
  assert ids == {f"shapes-train-{i}" for i in range(8)}
  # A second call reuses the prepared files.
  again = shapes_builder.builder(str(tmp_path), train_size=8, validation_size=3, test_size=3,
                              seed=5, image_size=16)
  assert len(again.as_data_source("test")) == 3


def test_hard_builder_has_its_own_files_and_reads_the_hard_records(tmp_path):
  easy = shapes_builder.builder(str(tmp_path), train_size=7, validation_size=2, test_size=2,
                                seed=5, image_size=16)
  b = shapes_builder.builder(str(tmp_path), train_size=7, validation_size=2, test_size=2, seed=5,
                             image_size=64, difficulty="hard")
  assert b.builder_config.name == "hard_s5_px64_n7-2-2"
  assert easy.builder_config.name == "s5_px16_n7-2-2"  # the easy names are what they were
  assert b.data_dir != easy.data_dir and glob.glob(os.path.join(b.data_dir, "*.array_record*"))
  source = tfds.data_source("mma_shapes", split="train", data_dir=str(tmp_path),
                            builder_kwargs={"config": b.builder_config})
  types = set()
  for i in range(len(source)):
    got = shapes_builder.decode_record(source[i])
    want = generate.make_example(5, "train", int(got["id"].rsplit("-", 1)[1]), 64, "hard")
    assert got == dict(want, images=got["images"])
    np.testing.assert_array_equal(got["images"][0], want["images"][0])
    types.add(got["question_type"])
  assert types == set(generate.HARD_QUESTION_TYPES)
