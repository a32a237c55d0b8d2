"""The training task from config.data: benchmark files, tokenizer, train iterators, eval prompts.

The one place the trainer asks for data, so another dataset changes this file, not the trainer.
"""
from __future__ import annotations

import functools
import os

import grain
import numpy as np

from mma_jax.data import chat, grain_pipeline, synthetic, tfds_shapes, vocab


class Task:
  """The built-in shapes benchmark, prepared as TFDS ArrayRecord files under config.data.dir."""

  def __init__(self, config, workdir: str):
    self.config = config
    d = config.data
    self.image_size = config.model.vision.image_size
    data_dir = d.dir or os.path.join(os.path.dirname(os.path.abspath(workdir)), "mma_jax_data")
    self.builder = tfds_shapes.builder(
        data_dir, train_size=d.train_size, validation_size=d.validation_size,
        test_size=d.test_size, seed=d.seed, image_size=self.image_size)
    self.tokenizer = vocab.shapes_tokenizer()
    self.skips = grain_pipeline.SkipCounter()

  def source(self, split: str):
    """Random-access records of a split (tfds data source, decoded lazily)."""
    return grain.MapDataset.source(self.builder.as_data_source(split)).map(
        tfds_shapes.decode_record)

  def _encode(self, tokens_per_image: int, order: str, drop_last_answer: bool = False):
    return functools.partial(chat.encode, tok=self.tokenizer, tokens_per_image=tokens_per_image,
                             order=order, stage=self.config.stage,
                             drop_last_answer=drop_last_answer, image_size=self.image_size)

  def train_iterator(self, order: str, tokens_per_image: int):
    """A checkpointable iterator of training batches in the given order ('I&T' or 'T&I')."""
    d, t = self.config.data, self.config.train
    ds = grain_pipeline.train_dataset(
        self.source("train"), self._encode(tokens_per_image, order),
        batch_size=t.batch_size, pack_length=d.pack_length, max_images=d.max_images,
        packing=d.packing, seed=d.shuffle_seed, skip_bad_records=d.skip_bad_records,
        prefetch=d.prefetch, counter=self.skips)
    return iter(ds)

  def example_batch(self, tokens_per_image: int) -> dict:
    """Zeros in the shapes of a training batch (for init)."""
    b, L, n, s = (self.config.train.batch_size, self.config.data.pack_length,
                  self.config.data.max_images, self.image_size)
    z = lambda *shape: np.zeros(shape, np.int32)
    return {"tokens": z(b, L), "segment_ids": z(b, L), "modality": z(b, L), "role": z(b, L),
            "turn": z(b, L), "positions": z(b, L),
            "images": np.zeros((b, n, s, s, 3), np.float32)}

  def eval_order(self) -> str:
    return "I&T" if self.config.data.order == "DOT" else self.config.data.order

  def eval_data(self, split: str, tokens_per_image: int):
    """(prompt batches, chance per type) for a split, reading its records once."""
    e = self.config.eval
    encode = self._encode(tokens_per_image, self.eval_order(), drop_last_answer=True)
    records = list(self.source(split))
    examples = [(encode(r), r["conversations"][-1]["value"], r["question_type"])
                for r in records]
    batches = grain_pipeline.prompt_batches(examples, batch_size=e.batch_size,
                                            prompt_length=e.prompt_length,
                                            max_images=e.max_images, image_size=self.image_size)
    return batches, synthetic.chance(records)
