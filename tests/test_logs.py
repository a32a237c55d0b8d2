"""The run's log: libraries' INFO lines are hidden unless --verbosity asks, ours never are."""
import logging
import os
import sys

import pytest
from absl import logging as absl_logging

from mma_jax import logs


def record(pathname: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_library_info_is_hidden_unless_verbose():
  orbax = os.path.join(sys.prefix, "lib", "site-packages", "orbax", "checkpoint",
                       "checkpoint_manager.py")
  ours = os.path.join(os.path.dirname(logs.__file__), "train", "loop.py")
  keep = logs.CHATTER.filter
  before = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.INFO)
    assert not keep(record(orbax, logging.INFO))
    assert keep(record(orbax, logging.WARNING))  # warnings of libraries always pass
    assert keep(record(ours, logging.INFO))
    absl_logging.set_verbosity(absl_logging.DEBUG)  # --verbosity=1
    assert keep(record(orbax, logging.INFO))
  finally:
    absl_logging.set_verbosity(before)


def test_tokamax_autotuning_misses_are_hidden_unless_verbose_other_warnings_pass():
  # tokamax/_src/ops/op.py logs through absl, one WARNING per shape and call site.
  tokamax = os.path.join(sys.prefix, "lib", "site-packages", "tokamax", "_src", "ops", "op.py")
  miss = logging.LogRecord("absl", logging.WARNING, tokamax, 565,
                           "Autotuning cache miss for %s on %s with key %s",
                           ("PallasMosaicGpuFlashAttention()", "NVIDIA H200", "{}"), None)
  before = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.INFO)
    assert not logs.CHATTER.filter(miss)
    assert logs.CHATTER.filter(record(tokamax, logging.WARNING))
    assert logs.CHATTER.filter(record(tokamax, logging.ERROR))
    absl_logging.set_verbosity(absl_logging.DEBUG)  # --verbosity=1
    assert logs.CHATTER.filter(miss)
  finally:
    absl_logging.set_verbosity(before)


def test_quiet_libraries_installs_the_filter_once():
  logs.quiet_libraries()
  logs.quiet_libraries()
  handler = absl_logging.get_absl_handler()
  assert sum(f is logs.CHATTER for f in handler.filters) == 1


def test_quiet_import_hides_native_stderr_but_not_errors(tmp_path, monkeypatch, capfd):
  (tmp_path / "noisy_native.py").write_text(
      "import os\nos.write(2, b'I0000 port.cc] oneDNN custom operations are on\\n')\n")
  (tmp_path / "broken_native.py").write_text("raise ImportError('no such library')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert logs.quiet_import("noisy_native").__name__ == "noisy_native"
  with pytest.raises(ImportError, match="no such library"):
    logs.quiet_import("broken_native")
  os.write(2, b"stderr is back\n")
  err = capfd.readouterr().err
  assert "oneDNN" not in err and "stderr is back" in err


def test_quiet_stdout_drops_prints_unless_verbose(capsys):
  before = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.INFO)
    with logs.quiet_stdout():
      print("Downloading and preparing dataset")
    absl_logging.set_verbosity(absl_logging.DEBUG)
    with logs.quiet_stdout():
      print("shown when verbose")
  finally:
    absl_logging.set_verbosity(before)
  out = capsys.readouterr().out
  assert "Downloading" not in out and "shown when verbose" in out
