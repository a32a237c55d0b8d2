"""Imported records on disk: TFDS-format ArrayRecord shards, one directory per source.

  DIR/mma_records-{split}.array_record-00000-of-00003 ...   (TFDS-serialized examples)
  DIR/dataset_info.json, DIR/features.json                  (TFDS metadata, all splits)
  DIR/import_report-{split}.json                            (written by the importer)

Readable with `tfds.builder_from_directory(DIR).as_data_source(split)` (random access, what
Grain needs). Images are stored as their encoded bytes, decoded at training time
(records.with_pixels), so any size and format survives the import.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Iterable

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from mma_jax.data import records

DATASET = "mma_records"

FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "image": tfds.features.Sequence(tfds.features.Text()),  # paths, relative to the image root
    "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
    "conversations": tfds.features.Text(),  # JSON list of {"from", "value"}
    "caption": tfds.features.Text(),
    "source": tfds.features.Text(),
    "task_type": tfds.features.Text(),
})


def _shards(out_dir: str, split: str) -> list[str]:
  return sorted(glob.glob(os.path.join(out_dir, f"{DATASET}-{split}.array_record-*")))


def write(out_dir: str, split: str, examples: Iterable[tuple[dict, list[bytes]]],
          records_per_shard: int = 10_000) -> int:
  """Writes (record, encoded images) pairs as the split of out_dir; returns how many.

  Shards go to a temporary folder first, so an import that fails leaves any earlier data of
  the split in place. Other splits already in out_dir are kept.
  """
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, f".tmp-{split}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  lengths, writer, total_bytes = [], None, 0
  try:
    for record, images in examples:
      if writer is None or lengths[-1] == records_per_shard:
        if writer is not None:
          writer.close()
        writer = array_record_module.ArrayRecordWriter(
            os.path.join(tmp, f"{len(lengths):05d}"), "group_size:1")
        lengths.append(0)
      data = FEATURES.serialize_example({
          "id": record["id"], "image": record["image"], "images": images,
          "conversations": json.dumps(record.get("conversations", [])),
          "caption": record.get("caption", ""), "source": record["source"],
          "task_type": record["task_type"]})
      writer.write(data)
      lengths[-1] += 1
      total_bytes += len(data)
  except BaseException:
    if writer is not None:
      writer.close()
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if writer is not None:
    writer.close()
  if not lengths:
    shutil.rmtree(tmp, ignore_errors=True)
    return 0
  for old in _shards(out_dir, split):
    os.remove(old)
  for i in range(len(lengths)):
    os.replace(os.path.join(tmp, f"{i:05d}"), os.path.join(
        out_dir, f"{DATASET}-{split}.array_record-{i:05d}-of-{len(lengths):05d}"))
  shutil.rmtree(tmp)
  infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=list(info.shard_lengths),
                                     num_bytes=info.num_bytes)
           for name, info in splits(out_dir).items() if name != split}
  infos[split] = tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=total_bytes)
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=FEATURES, split_infos=list(infos.values()), check_data=False,
      description="Records imported by mma_jax.data.importers (normalized record schema).")
  return sum(lengths)


def _builder(path: str):
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    return None
  return tfds.builder_from_directory(path)


def splits(path: str) -> dict:
  """split name -> tfds SplitInfo of an imported directory ({} if none there yet)."""
  builder = _builder(path)
  return dict(builder.info.splits) if builder else {}


def open_split(path: str, split: str, key: str = "config.data.mixture"):
  """Random-access raw examples of an imported split; records.from_stored decodes one.

  Errors name `key` (the config key or flag the path came from) and what to run.
  """
  builder = _builder(path)
  if builder is None:
    raise FileNotFoundError(
        f"{key}: no imported records in {path!r}. Import them first: python -m "
        "mma_jax.data.importers SOURCE --input ... --images ... --out PARENT_DIR "
        "(see README, 'Training on your own data').")
  if split not in builder.info.splits:
    raise KeyError(f"{key}: {path!r} has no split {split!r} (it has "
                   f"{sorted(builder.info.splits)}); import one with --split {split}.")
  return builder.as_data_source(split)


def read_all(path: str, split: str, limit: int = 0) -> list[dict]:
  """The records of a split (the first `limit`; 0 = all), images still encoded."""
  source = open_split(path, split)
  n = min(len(source), limit) if limit else len(source)
  return [records.from_stored(source[i]) for i in range(n)]
