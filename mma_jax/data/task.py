"""The training task from config.data: records, tokenizer, train iterators, eval prompts.

The one place the trainer asks for data, so another dataset changes this file, not the trainer.
Evaluation prompts and scores come from mma_jax.evaluate.runner.run_benchmark, for training too.
config.data.source picks the data: 'shapes' (the built-in benchmark, prepared as TFDS
ArrayRecord files under config.data.dir) or 'records' (directories written by
mma_jax.data.importers, mixed by config.data.mixture; see mma_jax.data.mixture).
"""
from __future__ import annotations

import functools
import os

import grain
import jax
from absl import logging

from mma_jax import distributed
from mma_jax.data import chat, images, mixture, pipeline, records, tfds_records, vocab
from mma_jax.data.shapes import builder as shapes_builder


def load_tokenizer(path: str, template: str = "shapes",
                   difficulty: str = "easy") -> vocab.Tokenizer:
  """config.data.tokenizer (a tokenizer.json; '' = the shapes one of config.data.difficulty)
  used with chat template config.data.template (mma_jax.data.templates)."""
  if not path:
    return vocab.shapes_tokenizer(difficulty)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.data.tokenizer={path!r} does not exist; give the path of a "
                            "tokenizer.json, or '' for the built-in shapes tokenizer.")
  try:
    return vocab.Tokenizer.load(path, template)
  except ValueError as e:
    raise ValueError(f"config.data.tokenizer={path!r} with config.data.template="
                     f"{template!r}: {e}") from None


def _decoded_then(encode, image_size: int, stage: str, grids, record):
  """Imported record -> chat.encode's example: images decoded inside the skippable step."""
  return encode(records.with_pixels(record, image_size, stage, grids))


def _prepared(record, image_size: int, grids):
  """Shapes record rendered at another size, or AnyRes: its images as the model sees them."""
  return dict(record, images=[images.prepare(im, image_size, grids) for im in record["images"]])


def _prepared_then(encode, image_size: int, grids, record):
  return encode(_prepared(record, image_size, grids))


class Task:
  """The data of a run: the shapes benchmark or a mixture of imported record directories."""

  def __init__(self, config, workdir: str):
    self.config = config
    d = config.data
    self.image_size = config.model.vision.image_size
    # AnyRes: an image becomes a thumbnail + the best grid's tiles (mma_jax.data.images.tiles)
    self.grids = tuple(tuple(int(n) for n in g) for g in d.anyres_grids)
    # The shapes benchmark may be rendered larger than the tower's input (for tiling).
    self.render_size = d.render_size or self.image_size
    # shapes images that are not the tower's input as stored: resized or tiled on the way in
    self._reshaped = bool(self.grids) or self.render_size != self.image_size
    difficulty = d.get("difficulty", "easy")  # configs saved before the hard benchmark lack it
    self.tokenizer = load_tokenizer(d.tokenizer, d.template, difficulty)
    self.skips = pipeline.SkipCounter()
    self.builder = None
    if d.source == "records":
      self.mixture = mixture.sources(d.mixture, d.dir, "train")
    else:
      data_dir = d.dir or os.path.join(os.path.dirname(os.path.abspath(workdir)), "mma_jax_data")
      self.builder = distributed.process_zero_first(lambda: shapes_builder.builder(
          data_dir, train_size=d.train_size, validation_size=d.validation_size,
          test_size=d.test_size, seed=d.seed, image_size=self.render_size,
          difficulty=difficulty, frames=d.video_frames))

  def source(self, split: str):
    """Random-access records of a split (decoded lazily); for 'records', the training mixture
    (evaluation reads the sources' own splits, see eval_records)."""
    if self.builder is None:
      if split != "train":
        raise ValueError(f"Imported records are mixed for training only, not for {split!r}.")
      _, datasets, weights = zip(*self.mixture)
      return mixture.mix(list(datasets), list(weights), self.config.data.shuffle_seed)
    return grain.MapDataset.source(self.builder.as_data_source(split)).map(
        functools.partial(shapes_builder.decode_record, frames=self.config.data.video_frames))

  def _record_encode(self, tokens_per_image: int, order: str):
    """A training record -> example dict; imported records get their images decoded first."""
    encode = functools.partial(chat.encode, tok=self.tokenizer,
                               tokens_per_image=tokens_per_image, order=order,
                               stage=self.config.stage, image_size=self.image_size,
                               pt_prompt=self.config.data.pt_prompt)
    if self.builder is None:
      return functools.partial(_decoded_then, encode, self.image_size, self.config.stage,
                               self.grids)
    if self._reshaped:
      return functools.partial(_prepared_then, encode, self.image_size, self.grids)
    return encode

  def train_iterator(self, order: str, tokens_per_image: int):
    """A checkpointable iterator of training batches in the given order ('I&T' or 'T&I')."""
    d, t = self.config.data, self.config.train
    ds = pipeline.train_dataset(
        self.source("train"), self._record_encode(tokens_per_image, order),
        batch_size=t.batch_size // jax.process_count(),  # this process's rows of the batch
        pack_length=d.pack_length, max_images=d.max_images,
        packing=d.packing, seed=d.shuffle_seed, skip_bad_records=d.skip_bad_records,
        prefetch=d.prefetch, counter=self.skips)
    return iter(ds)

  @property
  def name(self) -> str:
    return self.config.data.source  # 'shapes' or 'records'

  def eval_records(self, split: str) -> tuple[list[dict], list[str]]:
    """(records, category per record) of an evaluation split, read once: the question type
    for the shapes benchmark, the source name for imported records (at most
    config.data.test_size / validation_size per source). Images stay encoded until
    with_pixels."""
    if self.builder is not None:
      recs = list(self.source(split))
      return recs, [r["question_type"] for r in recs]
    d = self.config.data
    limit = d.test_size if split == "test" else d.validation_size
    recs, names = [], []
    for name in mixture.parse(d.mixture):
      path = os.path.join(d.dir, name)
      if split in tfds_records.splits(path):
        recs += tfds_records.read_all(path, split, limit)
        names += [name] * (len(recs) - len(names))
    if not recs:
      logging.warning("No imported source of config.data.mixture has a %r split, so there is "
                      "nothing to evaluate; import one with --split %s.", split, split)
    return recs, names

  def with_pixels(self, record: dict) -> dict:
    """An evaluation record ready for chat.encode: imported records get their images decoded
    (chat.BadRecord names an undecodable one); the shapes records already are, unless they
    are rendered at another size or tiled (AnyRes)."""
    if self.builder is None:
      return records.with_pixels(record, self.image_size, "sft", self.grids)
    return _prepared(record, self.image_size, self.grids) if self._reshaped else record
