"""A run's log is for a person: its own lines stand out, libraries' INFO chatter stays hidden.

Orbax (several INFO lines per checkpoint), TFDS, Grain and JAX log through Python logging at
INFO; TensorFlow's C++ core (at import) and TFDS's dataset banner and progress bars write to the
terminal directly. Below absl's --verbosity=1 (`-v 1`) only their WARNINGs and errors pass; INFO lines
from mma_jax and from clu (the metric lines, and ReportProgress's steps/s and ETA) always do.
A few libraries' WARNINGs are chatter too (CHATTY_WARNINGS: tokamax logs one "Autotuning cache
miss" per shape and call site, hundreds in a run): hidden alike below --verbosity=1.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import sys

from absl import logging as absl_logging

# INFO lines from these packages are the run's own.
_OWN = tuple(os.path.dirname(spec.origin) + os.sep for spec in map(
    importlib.util.find_spec, ("mma_jax", "clu")) if spec)  # clu: absent on a bare GPU image


def verbose() -> bool:
  """True when --verbosity (absl) asks for more than INFO: libraries' chatter is then shown."""
  return absl_logging.get_verbosity() >= 1


# WARNINGs that say nothing a person must act on (a prefix of the record's format string).
CHATTY_WARNINGS = ("Autotuning cache miss",)  # tokamax: it runs its default config instead


class LibraryChatter(logging.Filter):
  """Drops INFO and below, and the CHATTY_WARNINGS, from outside mma_jax and clu, unless
  verbose()."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.pathname.startswith(_OWN) or verbose():
      return True
    if record.levelno == logging.WARNING and str(record.msg).startswith(CHATTY_WARNINGS):
      return False
    return record.levelno >= logging.WARNING


CHATTER = LibraryChatter()


def quiet_import(name: str):
  """Import module `name` with the process's stderr (file descriptor 2) sent to /dev/null.

  TensorFlow (which TFDS imports) logs notices from its C++ core at import (oneDNN, CPU
  features), before anything could configure its logging, and TF_CPP_MIN_LOG_LEVEL no longer
  stops them. The command lines import it this way first; an import error still raises.
  """
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    return importlib.import_module(name)
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def quiet_libraries() -> None:
  """Hide libraries' INFO lines from absl's handler (command lines) and from the absl logger
  (notebooks, where its records reach the root logger's handlers). Idempotent."""
  for target in (absl_logging.get_absl_handler(), logging.getLogger("absl")):
    if CHATTER not in target.filters:
      target.addFilter(CHATTER)


@contextlib.contextmanager
def quiet_stdout():
  """Inside: what libraries print to stdout (TFDS's "Downloading and preparing dataset ..."
  banner) is dropped, unless verbose()."""
  if verbose():
    yield
  else:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
