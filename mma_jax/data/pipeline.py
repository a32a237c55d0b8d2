"""Grain input pipeline: records -> shuffled, sharded, tokenized, packed, batched training rows.

  MapDataset.source -> shuffle(seed) -> repeat -> shard per process -> map(encode) ->
  to_iter_dataset -> filter(bad, counted) -> first-fit pack to pack_length (each example with
  its images into max_images slots; padding mode = one example per row) -> finish rows
  (segment ids, targets, loss mask, image scaling) -> batch -> thread prefetch.

Grain maps records well ahead of what training reads (in threads); a bad record is therefore
counted where the pipeline reads it in order, after to_iter_dataset, once per time it is used.

A training batch (numpy; the keys are mma_jax.tokens.TRAIN_KEYS):
  tokens, targets, segment_ids, modality, role, turn, positions i32[B, L]; loss_mask bool[B, L]
  images f32[B, N, H, W, 3] in [-1, 1]; image_valid bool[B, N]
targets[i] = tokens[i + 1] inside the same example, and loss_mask[i] is True where that next
token is a response token: the loss of token i predicts token i + 1.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple

import grain
import jax
import numpy as np
from absl import logging

from mma_jax.data import images as image_lib
from mma_jax.data.chat import BadRecord
from mma_jax.tokens import RESPONSE, SEQUENCE_KEYS


class SkipCounter:
  """Counts records dropped by skip_bad_records, logging each with its reason."""

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()

  def skip(self, reason: str) -> None:
    with self._lock:
      self.count += 1
      logging.warning("Skipped bad record (%d so far): %s", self.count, reason)

  def keep(self, example) -> bool:
    """A filter: False (counted and logged) for a Skipped record, True for an example."""
    if isinstance(example, Skipped):
      self.skip(example.reason)
      return False
    return True


class Skipped(NamedTuple):
  """What Encode gives for a bad record under skip_bad_records: why (the record's id first)."""
  reason: str


class Encode:
  """record -> example dict, checking it fits a row; a bad record raises, or with
  skip_bad_records becomes Skipped."""

  def __init__(self, encode_fn: Callable[[Any], dict], pack_length: int, max_images: int,
               skip_bad_records: bool):
    self.encode_fn, self.pack_length, self.max_images = encode_fn, pack_length, max_images
    self.skip_bad_records = skip_bad_records

  def __call__(self, record):
    try:
      ex = self.encode_fn(record)
      n, k = len(ex["tokens"]), len(ex["images"])
      if n > self.pack_length or k > self.max_images:
        source = f" (source {record['source']!r})" if record.get("source") else ""
        raise BadRecord(
            f"Record {record.get('id')!r}{source} has {n} tokens and {k} images; a row holds "
            f"config.data.pack_length={self.pack_length} tokens and config.data.max_images="
            f"{self.max_images} images. Raise them (samples are never truncated) or set "
            "config.data.skip_bad_records=True to skip such records with a count.")
      return ex
    except BadRecord as e:
      if not self.skip_bad_records:
        raise
      return Skipped(str(e))  # counted by SkipCounter.keep when the pipeline reads it


class CachedExamples:
  """Random access to encode(source[i]), computed at the first read of i and then kept in
  memory: a training set small enough to hold (the shapes benchmark) is then read, decoded and
  tokenized once, not once per epoch. The same items (the encoders are deterministic); a record
  that raises is not kept (it raises again when read again)."""

  def __init__(self, source, encode: Callable[[Any], Any]):
    self.source, self.encode, self._items = source, encode, {}
    self._lock = threading.Lock()  # Grain reads with several threads; each item computed once

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    item = self._items.get(index)
    if item is None:
      with self._lock:
        item = self._items.get(index)
        if item is None:
          item = self._items[index] = self.encode(self.source[index])
    return item


# Grain's reader threads and read-ahead (config.data.read_threads / read_ahead; see
# train_dataset): the defaults here, for configs saved before those keys, and in config.py.
READ_THREADS, READ_AHEAD = 4, 64


def finish_row(packed) -> dict:
  """A packed row from Grain's packer -> the training row of the module docstring."""
  seg = packed["tokens_segment_ids"].astype(np.int32)
  tokens = packed["tokens"].astype(np.int32)
  role = np.where(seg != 0, packed["role"], 0).astype(np.int32)
  same = np.zeros_like(seg, bool)
  same[:-1] = (seg[1:] == seg[:-1]) & (seg[:-1] != 0)
  targets = np.where(same, np.roll(tokens, -1), 0).astype(np.int32)
  loss_mask = same & (np.roll(role, -1) == RESPONSE)
  images = image_lib.normalize(packed["images"])
  return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, "segment_ids": seg,
          "modality": packed["modality"].astype(np.int32), "role": role,
          "turn": packed["turn"].astype(np.int32), "positions": packed["positions"].astype(np.int32),
          "images": images, "image_valid": packed["images_segment_ids"] != 0}


def train_dataset(source, encode_fn: Callable[[Any], dict], *, batch_size: int,
                  pack_length: int, max_images: int, packing: bool = True, seed: int = 0,
                  skip_bad_records: bool = False, prefetch: int = 2, num_bins: int = 8,
                  counter: SkipCounter | None = None, cache: bool = False,
                  read_threads: int = READ_THREADS,
                  read_ahead: int = READ_AHEAD) -> grain.IterDataset:
  """The training IterDataset; iter() of it is a checkpointable Grain DatasetIterator.

  Args:
    source: a random-access source of records (e.g. tfds data source + decoding map).
    encode_fn: record -> example dict (mma_jax.data.chat.encode with its options bound).
    packing: first-fit pack several examples per row; False = one example per row, padded.
    cache: keep every encoded example in memory after its first read (CachedExamples).
    read_threads / read_ahead: Grain's reader threads and the examples they read ahead. Its
      iterator scans the whole read-ahead buffer at every example (0.2.18), so its default of
      500 cost more than the reads; 64 made a 2-core machine's batches 1.5x faster.
  The batches are the same whatever cache, read_threads and read_ahead are.
  """
  counter = counter or SkipCounter()
  encode = Encode(encode_fn, pack_length, max_images, skip_bad_records)
  if cache:  # encoded before shuffling: each record's example is kept under its own index
    ds = grain.MapDataset.source(CachedExamples(source, encode)).shuffle(seed=seed).repeat()
    ds = ds[jax.process_index()::jax.process_count()]
  else:
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    ds = ds[jax.process_index()::jax.process_count()].map(encode)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_ahead)
  it = ds.to_iter_dataset(options).filter(counter.keep)
  lengths = {k: pack_length for k in SEQUENCE_KEYS}
  lengths["images"] = max_images
  it = grain.experimental.FirstFitPackIterDataset(
      it, length_struct=lengths, num_packing_bins=num_bins if packing else 1,
      max_sequences_per_bin=None if packing else 1, shuffle_bins=False, seed=seed)
  it = it.map(finish_row).batch(batch_size, drop_remainder=True)
  if prefetch:
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
  return it
