"""Errors at the command line: a person's mistake is one line and exit status 2; a bug keeps
its traceback.

Every command-line entry (main, evaluate, evaluate score, the importers, convert, study,
infer) runs through run_absl or run. A user error is
  - a bad flag or config value (absl flag errors, app.UsageError, --config.KEY overrides),
  - a file that is missing, unreadable or not writable, a full disk (OSError),
  - a file in the wrong encoding (UnicodeError),
  - one of mma_jax's own exceptions (BadRecord, BadTableRow, CheckpointError, ...), or a
    ValueError / LookupError / ArithmeticError raised by mma_jax's own code: those messages
    are written for a person (malformed tables, impossible config values, a NaN loss).
It prints `Error: <message>` to stderr and exits with status 2; with --verbosity=1 (-v 1) the
traceback comes first. Anything else is a bug: it propagates with its traceback (status 1).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import traceback
from typing import Callable, Sequence

from absl import app, flags

EXIT_USER_ERROR = 2
_OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the mma_jax package


def _raised_here(error: BaseException) -> bool:
  """Whether the innermost frame of the error's traceback is mma_jax's own code."""
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN)


def is_user_error(error: BaseException) -> bool:
  """A mistake in what a person gave (see the module docstring), rather than a bug."""
  if isinstance(error, (OSError, UnicodeError, flags.Error, app.UsageError)):
    return True
  if type(error).__module__.startswith("mma_jax."):
    return True
  return isinstance(error, (ValueError, LookupError, ArithmeticError)) and _raised_here(error)


def message(error: BaseException) -> str:
  """The error's own words (a KeyError's without the quotes repr adds)."""
  if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    return error.args[0]
  return str(error).strip() or type(error).__name__


def verbose(argv: Sequence[str]) -> bool:
  """--verbosity=N / --verbosity N / -v N / -v=N with N >= 1 in argv (absl's flag, which the
  argparse commands accept too); read from argv, as flags may not be parsed yet."""
  args = list(argv)
  for i, arg in enumerate(args):
    name, eq, value = arg.partition("=")
    if name not in ("--verbosity", "-v", "--v"):
      continue
    if not eq:
      value = args[i + 1] if i + 1 < len(args) else ""
    try:
      return int(value) >= 1
    except ValueError:
      return False
  return False


def report(error: BaseException, argv: Sequence[str] = (), prefix: str = "Error") -> None:
  """Print a user error: its traceback first when verbose(argv), then `prefix: message`."""
  if verbose(argv):
    traceback.print_exception(error)
  sys.stderr.write(f"{prefix}: {message(error)}\n")
  sys.stderr.flush()


@contextlib.contextmanager
def user_errors(argv: Sequence[str] | None = None):
  """Inside: a user error is reported (see report) and exits with status 2; bugs propagate."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e):
      raise
    report(e, sys.argv if argv is None else argv)
    sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv):
  # absl's own parser prints usage and exits 1; its errors go to user_errors instead.
  return flags.FLAGS(argv)


def _guarded(main: Callable, argv):
  with user_errors():  # inside app.run, which would print usage for an app.UsageError
    return main(argv)


def _define(define_flags: Callable[[], None]) -> None:
  """define_flags(); ml_collections checks --config.KEY overrides right then, and a key that
  the config lacks raises AttributeError / KeyError: a flag error naming the override here."""
  try:
    define_flags()
  except (AttributeError, KeyError) as e:
    text = str(e).replace("\\'", "'")
    names = set(re.findall(r"'(\w+)'", text))
    given = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--") and "." in a]
    bad = [a for a in given if names & set(a.split("."))] or given
    hint = re.search(r"Did you mean [^?]*\?", text)
    raise flags.Error(f"{', '.join(bad) or 'an override'}: no such config key"
                      + (f"; {hint.group(0).lower()}" if hint else "")) from e


def run_absl(main: Callable, define_flags: Callable[[], None] | None = None) -> None:
  """app.run(main) with user errors as one line. define_flags() defines the command's flags
  first, inside the guard (a --config.KEY override is checked when its flag is defined)."""
  with user_errors():
    if define_flags is not None:
      _define(define_flags)
    app.run(lambda argv: _guarded(main, argv), flags_parser=_parse_flags)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> None:
  """sys.exit(main(argv)) for an argparse command (see ArgumentParser), user errors as one
  line."""
  argv = list(sys.argv[1:] if argv is None else argv)
  with user_errors(argv):
    code = main(argv)
  sys.exit(code)


def config(name: str = "config"):
  """The ConfigDict of a config_flags flag (None when not given). A config file that did not
  load is a user error naming the file (config_flags defers it to a multi-line OSError)."""
  value = getattr(flags.FLAGS, name)
  try:
    getattr(value, "keys", None)  # a config that did not load raises on any attribute
  except OSError as e:
    lines = str(e.__cause__ or e).strip().splitlines()
    raise FileNotFoundError(f"--{name}={flags.FLAGS[name].config_filename}: the config file "
                            f"did not load: {lines[-1].strip()}") from e
  return value


class ArgumentParser(argparse.ArgumentParser):
  """argparse with a one-line error (status 2) and absl's --verbosity / -v accepted."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument("-v", "--verbosity", type=int, default=0,
                      help="1: show the traceback of an error (default 0)")

  def error(self, message: str):
    sys.stderr.write(f"Error: {message} (see {self.prog} --help)\n")
    sys.exit(EXIT_USER_ERROR)
