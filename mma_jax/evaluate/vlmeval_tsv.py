"""VLMEvalKit's benchmark tables: read rows and their images, write prediction tables.

The format (VLMEvalKit docs/en/Development.md; pandas `read_csv(sep='\\t')` quoting):
  index       int, unique per row
  image       base64-encoded image bytes. A value of <= 64 characters is the index of another
              row whose image this row shares (VLMEvalKit stores each image once). A value that
              starts with '[' is a Python-literal list of base64 strings (several images); an
              empty value, no image (the question is asked as text only).
  image_path  without an `image` column: image file name(s), relative to the TSV's folder
  question, answer, and per benchmark hint, A..Z (options), category, l2-category, split, ...
VQAv2 / GQA: `answer` holds the human answers as a Python-literal list string, e.g.
  "['2', 'two', '2', ...]" (ten for VQAv2); a plain string is a single answer.
A predictions table has the benchmark's columns minus `image`, plus `prediction`.
"""
from __future__ import annotations

import ast
import base64
import binascii
import csv
import dataclasses
import os
import sys

import numpy as np

from mma_jax.data import images as images_lib

REFERENCE_MAX_CHARS = 64  # VLMEvalKit: an image cell this short names another row's index
SKIP_HINT = "or set config.eval.skip_bad_rows=True to skip such rows with a count"


class BadTableRow(ValueError):
  """A row that cannot be used; the message names the file, line and index."""


@dataclasses.dataclass
class Table:
  """Rows of one TSV, every value a string; lines[i] is the file line where row i ends."""
  path: str
  columns: list[str]
  rows: list[dict[str, str]]
  lines: list[int]
  image_cells: dict[str, str] = dataclasses.field(default_factory=dict)  # index -> full image

  def where(self, i: int) -> str:
    return f"{self.path} line {self.lines[i]} (index {self.rows[i].get('index', '?')})"


def skip_or_raise(error: BadTableRow, skip_bad_rows: bool, counter) -> None:
  """Raise the error, or (skip_bad_rows) count it on a mma_jax.data.pipeline.SkipCounter."""
  if not skip_bad_rows:
    raise error
  counter.skip(str(error))


def read_table(path: str, required=("index",), skip_bad_rows: bool = False,
               counter=None) -> Table:
  """All rows of a TSV. Missing columns are an error; malformed rows (wrong field count, empty
  or repeated index, an image reference to no image) raise BadTableRow or, with skip_bad_rows,
  are counted by `counter` (a mma_jax.data.pipeline.SkipCounter) and left out."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No benchmark table at {path}; pass --data=FILE.tsv (VLMEvalKit "
                            "TSV format) or put the file there.")
  if path.endswith((".xlsx", ".json")):
    raise ValueError(f"{path}: only TSV tables are read; write VLMEvalKit predictions with "
                     "PRED_FORMAT=tsv.")
  csv.field_size_limit(sys.maxsize)  # base64 images are long fields
  table = Table(os.path.abspath(path), [], [], [])
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f, delimiter="\t")
      table.columns = list(reader.fieldnames or [])
      missing = [c for c in dict.fromkeys(("index", *required)) if c not in table.columns]
      if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {table.columns}. "
                         "This benchmark needs those columns (VLMEvalKit TSV format).")
      seen = set()
      for row in reader:
        line, problem = reader.line_num, None
        if None in row:
          problem = f"has more fields than the header's {len(table.columns)}"
        elif None in row.values():
          problem = f"has fewer fields than the header's {len(table.columns)}"
        elif not row["index"].strip():
          problem = "has an empty index"
        elif row["index"] in seen:
          problem = f"repeats index {row['index']}"
        if problem:
          skip_or_raise(BadTableRow(f"{path} line {line}: the row {problem}. Fix the row, "
                                    f"{SKIP_HINT}."), skip_bad_rows, counter)
          continue
        seen.add(row["index"])
        table.rows.append(row)
        table.lines.append(line)
  except UnicodeDecodeError as e:  # a binary file, or another encoding
    raise ValueError(f"{path} is not UTF-8 text ({e.reason}): tables are read as "
                     "tab-separated UTF-8 (VLMEvalKit TSV format).") from None
  if "image" in table.columns:
    _check_references(table, skip_bad_rows, counter)
  return table


def _check_references(table: Table, skip_bad_rows: bool, counter) -> None:
  """Drop (or raise for) rows whose short image cell names no row with a full image."""
  table.image_cells = {r["index"]: r["image"] for r in table.rows
                       if len(r["image"]) > REFERENCE_MAX_CHARS}
  keep = []
  for i, row in enumerate(table.rows):
    ref = row["image"].strip()
    if ref and len(ref) <= REFERENCE_MAX_CHARS and ref not in table.image_cells:
      skip_or_raise(BadTableRow(f"{table.where(i)}: the image cell {ref!r} is a reference to "
                            f"index {ref}, which has no image in this file. Fix the row, "
                            f"{SKIP_HINT}."), skip_bad_rows, counter)
    else:
      keep.append(i)
  table.rows = [table.rows[i] for i in keep]
  table.lines = [table.lines[i] for i in keep]


def _cell_list(value: str) -> list[str]:
  """A cell that may hold a Python-literal list of strings -> the list."""
  value = value.strip()
  if value.startswith("["):
    parsed = ast.literal_eval(value)
    return [str(x) for x in parsed]
  return [value] if value else []


def images(table: Table, i: int, size: int, grids=()) -> list[np.ndarray]:
  """Row i's images as uint8[size, size, 3] arrays ([] when the row has none), or BadTableRow.

  Preprocessing is mma_jax.data.images.prepare: RGB, bicubic to a square (as AKI / SigLIP), or
  with AnyRes `grids` each image's tiles uint8[K, size, size, 3]."""
  row = table.rows[i]
  try:
    if "image" in table.columns:
      cell = row["image"].strip()
      if cell and len(cell) <= REFERENCE_MAX_CHARS:
        cell = table.image_cells[cell]
      return [images_lib.prepare(base64.b64decode(b, validate=True), size, grids)
              for b in _cell_list(cell)]
    if "image_path" in table.columns:
      root = os.path.dirname(table.path)
      paths = [os.path.join(root, p) for p in _cell_list(row["image_path"])]
      for p in paths:
        if not os.path.isfile(p):
          raise FileNotFoundError(f"the image file {p} does not exist")
      return [images_lib.load(p, size, grids) for p in paths]
    return []
  except (binascii.Error, OSError, ValueError, SyntaxError) as e:
    raise BadTableRow(f"{table.where(i)}: cannot read the image ({type(e).__name__}: {e}). Fix "
                 f"the row, {SKIP_HINT}.") from e


def write_predictions(path: str, columns, rows) -> None:
  """VLMEvalKit's prediction table: `columns` minus image, then prediction, one row each."""
  out = [c for c in columns if c not in ("image", "prediction")] + ["prediction"]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(out)
    for row in rows:
      writer.writerow([row.get(c, "") for c in out])
