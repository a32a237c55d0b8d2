"""Importers: the paper's PT / SFT data, in their released layouts, -> imported record dirs.

  python -m mma_jax.data.importers SOURCE --input FILE... --images ROOT --out DIR

writes DIR/NAME (NAME = SOURCE unless --name), a tfds_records directory that
config.data.mixture names, and prints how many records were written and skipped, per reason.
Bad rows (missing image file, undecodable image, malformed row) stop the import with an error
naming the file and row, or, with skip_bad, are skipped and counted.
"""
from __future__ import annotations

import inspect
import os
from typing import Iterator

from mma_jax.data import records, tfds_records
from mma_jax.data.importers import llava, sources, video, webdataset
from mma_jax.data.importers.common import Example, LeftOut, Report

# name -> (importer(inputs, images, split, source) -> Iterator[Example | BadRow | LeftOut],
#          needs --images)
SOURCES = {
    "vqav2": (sources.vqav2, True),
    "gqa": (sources.gqa, True),
    "vsr": (sources.vsr, True),
    "ocrvqa": (sources.ocrvqa, True),
    "aokvqa": (sources.aokvqa, True),
    "scienceqa": (sources.scienceqa, True),
    "refcoco": (sources.refcoco, True),
    "refcoco+": (sources.refcoco, True),
    "refcocog": (sources.refcoco, True),
    "vg": (sources.vg, True),
    "llava150k": (llava.llava150k, True),
    "llava": (llava.llava, True),
    "webdataset": (webdataset.webdataset, False),
    "llava_video": (video.llava_video, True),
}


def _rows(source: str, inputs: list[str], images: str | None, split: str, frames: int):
  """The importer's items; a file whose layout it cannot read is an error naming the files
  (row-level problems arrive as BadRows instead)."""
  importer = SOURCES[source][0]
  # options go to the importers whose signature takes them (frames: the video sources)
  accepted = inspect.signature(importer).parameters
  options = {k: v for k, v in {"frames": frames}.items() if k in accepted}
  try:
    yield from importer(inputs, images, split, source, **options)
  except (KeyError, TypeError, AttributeError, IndexError) as e:
    raise ValueError(f"{source}: {inputs} do not have the layout this importer reads "
                     f"({type(e).__name__}: {e}); see the docstring of "
                     f"{importer.__module__}.{importer.__name__}.") from None


def _checked(items, images: str | None, report: Report, skip_bad: bool, limit: int,
             max_side: int) -> Iterator[tuple[dict, list[bytes]]]:
  """Valid (record, encoded images) pairs; bad rows raise or are counted in the report."""
  for item in items:
    if limit and report.written >= limit:
      return
    if isinstance(item, LeftOut):  # not a bad row: counted, --skip_bad or not
      report.skip(item)
      continue
    try:
      if isinstance(item, records.BadRow):
        raise item
      record = records.validate(item.record, item.where)
      if item.images is not None:
        data = [records.check_image(b, item.where, p, max_side)
                for b, p in zip(item.images, record["image"], strict=True)]
      else:
        data = [records.read_image(images, p, item.where, max_side) for p in record["image"]]
    except records.BadRow as e:
      if not skip_bad:
        raise records.BadRow(e.where, e.reason, e.detail + ". Fix the row, or pass --skip_bad "
                             "to skip such rows with a count.") from None
      report.skip(e)
      continue
    report.written += 1
    yield record, data


def import_source(source: str, inputs: list[str], images: str | None, out: str, *,
                  name: str = "", split: str = "train", skip_bad: bool = False, limit: int = 0,
                  max_side: int = 0, records_per_shard: int = 10_000,
                  report: Report | None = None, frames: int = video.DEFAULT_FRAMES) -> Report:
  """Imports one source into out/name (name defaults to source); returns the report.

  Args:
    inputs: the source's released files (see each importer's docstring).
    images: the image root the source's paths are relative to (None for webdataset).
    split: the split written ('train', 'validation', 'test'); sources that hold several
      splits in one file keep only its rows (the others are counted as 'other split').
    limit: stop after this many records (0 = all).
    max_side: re-encode images whose longer side is larger (0 = store the file's bytes).
    report: filled in as rows go (pass one to read the counts after an error).
    frames: video sources: frames sampled per video.
  """
  if source not in SOURCES:
    raise ValueError(f"Unknown source {source!r}; use one of {sorted(SOURCES)}.")
  if SOURCES[source][1] and not images:
    raise ValueError(f"Source {source!r} needs --images (the root its image paths are "
                     "relative to).")
  if not inputs:
    raise ValueError(f"Source {source!r} needs --input (see its importer's docstring).")
  seen = set()
  for path in inputs:
    if os.path.abspath(path) in seen:  # its rows would be imported twice, under the same ids
      raise ValueError(f"Source {source!r}: --input names {path} twice; pass each file once.")
    seen.add(os.path.abspath(path))
  out_dir = os.path.join(out, name or source)
  report = report or Report(name or source, split, out_dir)
  items = _rows(source, list(inputs), images, split, frames)
  tfds_records.write(out_dir, split, _checked(items, images, report, skip_bad, limit, max_side),
                     records_per_shard)
  report.save()
  return report
