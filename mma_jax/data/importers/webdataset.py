"""WebDataset caption shards for PT -> caption records, read with the stdlib tarfile.

A shard is a tar whose members {key}.jpg|jpeg|png and {key}.txt form one sample (the key is
the member path up to the first dot of its file name; a sample's members are consecutive, as
img2dataset writes them). Other members ({key}.json, ...) are ignored.
"""
from __future__ import annotations

import glob
import os
import tarfile

from mma_jax.data.importers.common import Example
from mma_jax.data.records import CAPTION, MALFORMED_ROW, MISSING_IMAGE, BadRow

IMAGE_EXTS = ("jpg", "jpeg", "png")


def _split_name(name: str) -> tuple[str, str]:
  folder, base = os.path.split(name)
  stem, _, ext = base.partition(".")
  return os.path.join(folder, stem), ext.lower()


def _samples(shard: str):
  """(key, {ext: bytes}) per sample of a shard, in order; a broken tar yields a BadRow."""
  key, parts = None, {}
  try:
    with tarfile.open(shard, "r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        k, ext = _split_name(member.name)
        if k != key and key is not None:
          yield key, parts
          parts = {}
        key = k
        parts[ext] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    yield None, BadRow(f"{shard} after sample {key!r}", MALFORMED_ROW,
                       f"unreadable tar ({type(e).__name__}: {e}); the rest of the shard is lost")
    return
  if key is not None:
    yield key, parts


def shards(patterns: list[str]) -> list[str]:
  """Shard paths from paths or glob patterns, in order; a pattern that matches nothing is an
  error naming it."""
  out = []
  for p in patterns:
    found = sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if os.path.exists(p) else [])
    if not found:
      raise FileNotFoundError(f"{p} matches no shard; check --input.")
    out += found
  return out


def webdataset(inputs, images, split, source):
  """--input SHARD.tar ... (or a quoted glob 'dir/*.tar'); no --images: images are in the tar."""
  del images, split
  for shard in shards(inputs):
    name = os.path.basename(shard)
    for key, parts in _samples(shard):
      if isinstance(parts, BadRow):
        yield parts
        continue
      where = f"{shard} sample {key!r}"
      ext = next((e for e in IMAGE_EXTS if e in parts), None)
      if ext is None:
        yield BadRow(where, MISSING_IMAGE, f"no {'/'.join(IMAGE_EXTS)} member for this key "
                     f"(members: {sorted(parts)})")
        continue
      if "txt" not in parts:
        yield BadRow(where, MALFORMED_ROW, f"no .txt caption member (members: {sorted(parts)})")
        continue
      try:
        caption = parts["txt"].decode("utf-8").strip()
      except UnicodeDecodeError as e:
        yield BadRow(where, MALFORMED_ROW, f"caption is not UTF-8 ({e})")
        continue
      record = {"id": f"{source}-{name}/{key}", "image": [f"{name}/{key}.{ext}"],
                "conversations": [], "caption": caption, "source": source,
                "task_type": CAPTION}
      yield Example(where, record, images=[parts[ext]])
