"""What every importer shares: rows of the released files with their location, the examples
importers yield, and the per-source import report."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Callable, Iterator

from mma_jax.data.records import MALFORMED_ROW, BadRow

# What a row that lacks a field or holds the wrong type raises while a record is built.
MALFORMED_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


@dataclasses.dataclass
class Example:
  """A normalized record and where it came from.

  images: the encoded image bytes when the source file holds them (WebDataset); None = read
  record['image'] from the image root.
  """
  where: str
  record: dict
  images: list[bytes] | None = None


@dataclasses.dataclass
class LeftOut:
  """A good row deliberately not imported (e.g. one of another split): counted in the report
  under `reason` whatever --skip_bad says, never an error."""
  reason: str
  detail: str
  where: str = ""

  def __str__(self) -> str:
    return f"{self.where}: {self.reason}: {self.detail}"


OTHER_SPLIT = "other split"


def load_json(path: str):
  """A whole JSON file; an unreadable file is an error naming it (no row to skip)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} does not exist; check --input.") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); check --input.") from None


def rows(path: str, items=None, label: str = "row") -> Iterator[tuple[str, object, object]]:
  """(where, key, row) for each row: of `items` (a list or dict loaded from path) or of the file
  itself (.json list/dict, or .jsonl one object a line). where = 'FILE row 3' / "FILE key 'x'" /
  'FILE line 4'; a .jsonl line that is not JSON is yielded as a BadRow."""
  if items is None and path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path} line {n}"
        try:
          yield where, n, json.loads(line)
        except json.JSONDecodeError as e:
          yield where, n, BadRow(where, MALFORMED_ROW, f"not JSON ({e})")
    return
  items = load_json(path) if items is None else items
  if isinstance(items, dict):
    for key, row in items.items():
      yield f"{path} key {key!r}", key, row
  elif isinstance(items, list):
    for i, row in enumerate(items):
      yield f"{path} {label} {i}", i, row
  else:
    raise ValueError(f"{path}: expected a JSON list or object of rows, got "
                     f"{type(items).__name__}; check --input.")


def guard(where: str, build: Callable[[], list[dict] | LeftOut]
          ) -> Iterator[Example | BadRow | LeftOut]:
  """The records build() makes from one row, or one BadRow(MALFORMED_ROW) naming the row, or
  the LeftOut build() returns, placed at the row."""
  try:
    made = build()
  except BadRow as e:
    yield e
    return
  except MALFORMED_ERRORS as e:
    yield BadRow(where, MALFORMED_ROW, f"{type(e).__name__}: {e}")
    return
  if isinstance(made, LeftOut):
    yield dataclasses.replace(made, where=where)
    return
  for record in made:
    yield Example(where, record)


def examples(path: str, make: Callable[[object, object], list[dict] | LeftOut], items=None,
             label: str = "row") -> Iterator[Example | BadRow | LeftOut]:
  """guard(make(key, row)) over rows(path, items)."""
  for where, key, row in rows(path, items, label):
    if isinstance(row, BadRow):
      yield row
    else:
      yield from guard(where, lambda: make(key, row))


class Report:
  """Records written and skipped per reason for one source, with the first message of each."""

  def __init__(self, source: str, split: str, out_dir: str):
    self.source, self.split, self.out_dir = source, split, out_dir
    self.written = 0
    self.skipped: collections.Counter[str] = collections.Counter()
    self.first: dict[str, str] = {}

  def skip(self, error: BadRow | LeftOut) -> None:
    self.skipped[error.reason] += 1
    self.first.setdefault(error.reason, str(error))

  def summary(self) -> str:
    lines = [f"{self.source} [{self.split}]: {self.written} written, "
             f"{sum(self.skipped.values())} skipped -> {self.out_dir}"]
    for reason, n in sorted(self.skipped.items()):
      lines.append(f"  skipped {n}: {reason} (first: {self.first[reason]})")
    return "\n".join(lines)

  def to_json(self) -> dict:
    return {"source": self.source, "split": self.split, "written": self.written,
            "skipped": dict(self.skipped), "first": self.first}

  def save(self) -> None:
    if os.path.isdir(self.out_dir):
      with open(os.path.join(self.out_dir, f"import_report-{self.split}.json"), "w") as f:
        json.dump(self.to_json(), f, indent=1)
