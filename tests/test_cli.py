"""User errors at every command line: one line, exit status 2, the traceback only with
--verbosity=1; bugs keep theirs. The commands run as a user runs them (subprocesses, started
together to share their start-up time)."""
import concurrent.futures
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from mma_jax import cli
from mma_jax import config as config_lib
from mma_jax.data import chat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tables(tmp):
  """Predictions tables a user might pass by mistake: path by name."""
  out = {"missing": str(tmp / "absent.tsv")}
  for name, content in [("columns", b"index\tquestion\n0\tIs it red?\n"),
                        ("short", b"index\tquestion\tanswer\tcategory\tprediction\n"
                                  b"0\tIs it red?\tyes\trandom\tyes\n1\tIs it blue?\n"),
                        ("binary", bytes(range(256)) * 4)]:
    (tmp / f"{name}.tsv").write_bytes(content)
    out[name] = str(tmp / f"{name}.tsv")
  (tmp / "a_file").write_text("")
  out["file"] = str(tmp / "a_file")
  return out


# (name, command after `python -m`, the error line it must print)
CASES = [
    ("main: a config value", ["mma_jax.main", "--workdir={file}/run", "--config.mask=bidi"],
     "Error: config.mask='bidi': use one of"),
    ("main: a config key", ["mma_jax.main", "--workdir={file}/run", "--config.train.stepz=3"],
     'Error: --config.train.stepz: no such config key; did you mean "steps" instead of "stepz"?'),
    ("main: a config type", ["mma_jax.main", "--workdir={file}/run",
                             "--config.train.steps=many"],
     "Error: flag --config.train.steps=many: invalid literal for int()"),
    ("main: a config file", ["mma_jax.main", "--workdir={file}/run", "--config={missing}.py"],
     "Error: --config={missing}.py: the config file did not load: [Errno 2] No such file"),
    ("main: a workdir that cannot be made", ["mma_jax.main", "--workdir={file}/run",
                                            "--config.train.steps=1"],
     "Error: [Errno 20] Not a directory: '{file}/run'"),
    ("score: a missing file", ["mma_jax.evaluate", "score", "--benchmark=pope",
                               "--predictions={missing}"],
     "Error: No benchmark table at {missing}"),
    ("score: missing columns", ["mma_jax.evaluate", "score", "--benchmark=pope",
                                "--predictions={columns}"],
     "Error: {columns}: missing column(s) ['answer', 'prediction']"),
    ("score: a short row", ["mma_jax.evaluate", "score", "--benchmark=pope",
                            "--predictions={short}"],
     "Error: {short} line 3: the row has fewer fields than the header's 5."),
    ("score: a binary file", ["mma_jax.evaluate", "score", "--benchmark=pope",
                              "--predictions={binary}"],
     "Error: {binary} is not UTF-8 text"),
    ("evaluate: a benchmark name", ["mma_jax.evaluate", "--config=configs/sft_mma.py",
                                    "--workdir={file}", "--benchmark=popp"],
     "Error: Unknown benchmark 'popp'"),
    ("importers: a missing input", ["mma_jax.data.importers", "llava", "--input={missing}",
                                    "--images={file}", "--out={missing}.out"],
     "Import failed, nothing written for this split: {missing} does not exist"),
    ("importers: a bad option", ["mma_jax.data.importers", "llava", "--input", "x",
                                 "--out", "y", "--limit", "ten"],
     "Error: argument --limit: invalid int value: 'ten'"),
    ("convert: a missing directory", ["mma_jax.convert", "--llm", "{missing}", "--out",
                                      "{file}.out"],
     "Error: {missing}/config.json not found"),
    ("study: a flag value", ["mma_jax.study", "--workdir={file}", "--jobs=0"],
     "Error: --jobs=0 must be at least 1."),
    ("infer: a missing flag", ["mma_jax.infer", "--model={missing}", "--image={file}"],
     "Error: flag --question=None: Flag --question must have a value other than None."),
    ("infer: a missing model", ["mma_jax.infer", "--model={missing}", "--image={file}",
                                "--question=What is it?"],
     "Error: {missing}/model.json not found"),
]
VERBOSE = ("main: a config value, --verbosity=1",
           CASES[0][1] + ["--verbosity=1"], CASES[0][2])


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """name -> (the expected line, the finished process) of every case, run 4 at a time."""
  paths = tables(tmp_path_factory.mktemp("cli"))

  def one(case):
    name, args, line = case
    cmd = [sys.executable, "-m", *(a.format(**paths) for a in args)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    return name, (line.format(**paths), done)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return dict(pool.map(one, CASES + [VERBOSE]))


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_a_user_error_is_one_line_and_exit_status_2(ran, name):
  line, done = ran[name]
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  errors = [l for l in done.stderr.splitlines() if l.strip()]
  assert errors[-1].startswith(line), errors
  # One line: only the importers print their report's summary line before it.
  assert len(errors) == (2 if name.startswith("importers: a missing") else 1), errors


def test_verbosity_1_shows_the_traceback_too(ran):
  line, done = ran[VERBOSE[0]]
  assert done.returncode == 2
  assert "Traceback (most recent call last)" in done.stderr and "config.py" in done.stderr
  assert done.stderr.strip().splitlines()[-1].startswith(line)


# --- the rules, in this process ---------------------------------------------------------------

def _raised(fn):
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError("no error")


def test_what_counts_as_a_user_error():
  bad = config_lib.base_config()
  bad.mask = "bidi"
  assert cli.is_user_error(_raised(lambda: config_lib.validate(bad)))  # mma_jax's words
  assert cli.is_user_error(_raised(lambda: open("/nonexistent/file")))
  assert cli.is_user_error(_raised(lambda: b"\xff".decode()))
  assert cli.is_user_error(_raised(lambda: flags.FLAGS["verbosity"].parse("x")))
  assert cli.is_user_error(chat.BadRecord("record 'r1': ..."))  # mma_jax's own class
  # Bugs: raised by a library, or by code outside mma_jax.
  assert not cli.is_user_error(_raised(lambda: np.zeros(3).reshape(2)))
  assert not cli.is_user_error(_raised(lambda: {}["key"]))
  assert not cli.is_user_error(_raised(lambda: None.shape))


def test_user_errors_exit_2_and_bugs_keep_their_traceback(capsys):
  bad = config_lib.base_config()
  bad.train.keep = 1
  with pytest.raises(SystemExit) as e:
    with cli.user_errors(argv=[]):
      config_lib.validate(bad)
  assert e.value.code == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert err == "Error: config.train.keep=1: must be at least 2: the newest checkpoint is " \
      "never the only one kept, so a resume has an older one to fall back on if it is " \
      "damaged\n"
  with pytest.raises(SystemExit):
    with cli.user_errors(argv=["-v", "1"]):
      config_lib.validate(bad)
  assert "Traceback" in capsys.readouterr().err
  with pytest.raises(ValueError, match="cannot reshape"):
    with cli.user_errors(argv=[]):
      np.zeros(3).reshape(2)


@pytest.mark.parametrize("argv, verbose", [
    (["--verbosity=1"], True), (["--verbosity", "2"], True), (["-v", "1"], True),
    (["-v=1"], True), (["--v=1"], True), (["--verbosity=0"], False), ([], False),
    (["--verbosity=-1"], False), (["--verbosity"], False)])
def test_verbosity_is_read_from_the_command_line(argv, verbose):
  assert cli.verbose(["--workdir=x", *argv]) == verbose
