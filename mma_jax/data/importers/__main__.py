"""python -m mma_jax.data.importers SOURCE --input ... --images ... --out DIR (see __init__).

Bad input (a missing file, a malformed row without --skip_bad, a bad option) prints the report
and one line, exit status 2 (mma_jax.cli); nothing is written for the split.
"""
from __future__ import annotations

import os
import sys

from mma_jax import cli
from mma_jax.data.importers import SOURCES, import_source
from mma_jax.data.importers.common import Report


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m mma_jax.data.importers", description=__doc__)
  p.add_argument("source", choices=sorted(SOURCES))
  p.add_argument("--input", nargs="+", required=True,
                 help="the source's released file(s); WebDataset: shard paths or a quoted glob")
  p.add_argument("--images", default=None, help="root the source's image paths are relative to")
  p.add_argument("--out", required=True, help="parent dir; records go to OUT/NAME")
  p.add_argument("--name", default="", help="output dir name (default: SOURCE)")
  p.add_argument("--split", default="train", help="split to write: train, validation, test")
  p.add_argument("--skip_bad", action="store_true",
                 help="skip bad rows with a count instead of stopping at the first")
  p.add_argument("--limit", type=int, default=0, help="stop after N records (0 = all)")
  p.add_argument("--max_side", type=int, default=0,
                 help="re-encode larger images to this longer side (0 = keep the bytes)")
  p.add_argument("--records_per_shard", type=int, default=10_000)
  p.add_argument("--frames", type=int, default=8,
                 help="video sources (llava_video): frames sampled uniformly per video")
  a = p.parse_args(argv)
  report = Report(a.name or a.source, a.split, os.path.join(a.out, a.name or a.source))
  try:
    import_source(a.source, a.input, a.images, a.out, name=a.name, split=a.split,
                  skip_bad=a.skip_bad, limit=a.limit, max_side=a.max_side,
                  records_per_shard=a.records_per_shard, report=report, frames=a.frames)
  except Exception as e:  # pylint: disable=broad-except  # records.BadRow is a ValueError
    if not cli.is_user_error(e):
      raise  # a bug: its traceback
    print(report.summary(), file=sys.stderr)
    cli.report(e, argv or sys.argv, "Import failed, nothing written for this split")
    return cli.EXIT_USER_ERROR
  print(report.summary())
  if not report.written:
    print("No records written: every row was skipped.", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  cli.run(main)
