"""The evaluation harness end to end: a tiny model trained 2 steps, evaluated through the same
path on the built-in shapes benchmark and on a VLMEvalKit-format fixture TSV."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mma_jax.data import chat, pipeline, vocab
from mma_jax.evaluate import prompts, runner
from mma_jax.evaluate import scoring as bm
from mma_jax.evaluate.vlmeval_tsv import BadTableRow
from mma_jax.train.loop import train_and_evaluate
from tests.evaluate.test_vlmeval_tsv import BLUE, RED, image_b64, write_tsv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "sft_mma.py")


def overrides(data_dir):
  """The tiny run: the same keys in process and on the command line."""
  return {"model.vision.image_size": 16, "model.vision.hidden": 32, "model.vision.layers": 1,
          "model.vision.heads": 2, "model.vision.mlp_dim": 64, "model.llm.hidden": 64,
          "model.llm.layers": 1, "model.llm.heads": 2, "model.llm.kv_heads": 1,
          "model.llm.mlp_dim": 128, "data.dir": data_dir, "data.train_size": 48,
          "data.validation_size": 6, "data.test_size": 8, "data.pack_length": 96,
          "data.prefetch": 0, "train.steps": 2, "train.batch_size": 4,
          "train.async_checkpoint": False, "optim.warmup_steps": 1, "eval.batch_size": 8,
          "eval.prompt_length": 64}


def make_config(data_dir):
  spec = importlib.util.spec_from_file_location("sft_mma", CONFIG)  # the file the CLI reads
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  for key, value in overrides(data_dir).items():
    *path, name = key.split(".")
    node = c
    for part in path:
      node = node[part]
    node[name] = value
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir, test metrics of the training run: the shapes test split's only;
  the run also scores a POPE fixture through config.eval.benchmarks)."""
  root = tmp_path_factory.mktemp("eval")
  config = make_config(str(root / "tfds"))
  config.eval.benchmarks = "pope=" + pope_fixture(root / "pope.tsv")
  workdir = str(root / "run")
  metrics = train_and_evaluate(config, workdir)
  assert {k for k in metrics if "/" in k and k.split("/")[0] == "pope"}
  return config, workdir, {k: v for k, v in metrics.items() if not k.startswith("pope/")}


def test_training_scores_config_benchmarks_as_the_cli_does(trained, tmp_path):
  config, workdir, _ = trained
  data = config.eval.benchmarks.split("=", 1)[1]
  saved = json.load(open(os.path.join(workdir, "results.json")))["benchmarks"]["pope"]
  written = json.load(open(os.path.join(workdir, "eval", "pope_results.json")))
  cli = runner.run(config, workdir, "pope", data=data, out=str(tmp_path))
  assert saved["metrics"] == written["metrics"] == cli["metrics"]  # same prompts and scorer
  assert saved["rule"] == cli["rule"] == "vlmevalkit" and saved["rows"] == 3
  assert saved["prompt"] == cli["prompt"] and saved["decoding"] == cli["decoding"]


def pope_fixture(path, bad_image=False):
  rows = [{"index": 0, "image": image_b64(RED), "question": "Is there a red square?",
           "answer": "Yes", "category": "random,popular", "image_path": "a.jpg"},
          {"index": 1, "image": "0", "question": "Is there a blue circle?", "answer": "No",
           "category": "random", "image_path": "a.jpg"},
          {"index": 2, "image": image_b64(BLUE), "question": "Is there a blue square?",
           "answer": "Yes", "category": "adversarial", "image_path": "b.jpg"}]
  if bad_image:
    rows.append({"index": 3, "image": "x" * 100, "question": "?", "answer": "No",
                 "category": "random", "image_path": "c.jpg"})
  return write_tsv(path, ["index", "image", "question", "answer", "category", "image_path"],
                   rows)


def test_shapes_through_the_cli_path_matches_training(trained, tmp_path):
  config, workdir, train_metrics = trained
  results = runner.run(config, workdir, "shapes", out=str(tmp_path))
  assert results["metrics"] == pytest.approx(train_metrics)  # same prompts, batches, params
  assert results["checkpoint_step"] == 2 and results["rows"] == 8
  assert "records' own conversations" in results["prompt"] and results["extraction"]
  saved = json.load(open(tmp_path / "shapes_results.json"))
  assert saved["metrics"] == pytest.approx(train_metrics)
  with open(tmp_path / "shapes_predictions.tsv", newline="") as f:
    table = list(csv.DictReader(f, delimiter="\t"))
  assert len(table) == 8 and set(table[0]) == {"index", "id", "question", "answer",
                                                "category", "prediction"}
  rescored = runner.score_file("shapes", str(tmp_path / "shapes_predictions.tsv"))
  assert rescored["metrics"] == pytest.approx(train_metrics)


def test_bad_rows_stop_decoding_with_file_and_row_or_are_counted(tmp_path):
  """Rows fail while their prompts are built, before the model runs: none is needed here."""
  config = make_config("")
  config.eval.prompt_length = 30  # one question in the fixture is too long for it
  data = pope_fixture(tmp_path / "pope.tsv", bad_image=True)
  table, orphans = runner.read_benchmark(bm.get("pope"), data, False, None)
  assert orphans == 0
  table.rows[2]["question"] = "is there " * 20
  encode = chat.prompt_encoder(vocab.shapes_tokenizer(), 4, "I&T", 16)
  record_of = lambda i: prompts.tsv_record(table, bm.get("pope"), 16, i)
  decode = lambda: runner.decode_table(None, None, table, record_of, encode, None, config,
                                         counter)
  counter = pipeline.SkipCounter()
  with pytest.raises(BadTableRow, match=r"pope.tsv line 4 \(index 2\): the prompt has \d+ tokens "
                     r"and 1 images; .*config.eval.prompt_length=30"):
    decode()
  table.rows[2]["question"] = "short"
  with pytest.raises(BadTableRow, match=r"pope.tsv line 5 \(index 3\): cannot read the image"):
    decode()
  config.eval.batch_size, config.eval.skip_bad_rows = 1, True
  table.rows = table.rows[3:]  # the bad row alone: skipped, so nothing is decoded
  assert decode() == {} and counter.count == 1


MMBENCH = ["index", "image", "question", "answer", "category", "A", "B"]


def test_mmbench_table_with_copies_keeps_file_lines_and_drops_orphan_copies(tmp_path):
  img = image_b64(RED)
  good = {"image": img, "question": "Colour?", "category": "c"}
  rows = [dict(good, index=1, answer="A", A="red", B="blue"),
          ["2", img, "Colour?"],  # main row 2 has too few fields: bad
          dict(good, index=1000001, answer="B", A="blue", B="red"),
          dict(good, index=1000002, answer="A", A="blue", B="red"),
          dict(good, index=3000005, answer="A", A="blue", B="red")]  # no main row 5 at all
  data = write_tsv(tmp_path / "mmbench.tsv", MMBENCH, rows)
  with pytest.raises(BadTableRow, match=r"mmbench.tsv line 3: the row has fewer fields"):
    runner.read_benchmark(bm.get("mmbench"), data, False, None)
  counter = pipeline.SkipCounter()
  table, orphans = runner.read_benchmark(bm.get("mmbench"), data, True, counter)
  assert counter.count == 1 and orphans == 2  # 1000002 (main skipped) and 3000005 (absent)
  assert [r["index"] for r in table.rows] == ["1", "1000001"]  # copies kept: none added
  assert table.lines == [2, 4]  # each row's own line in the file, not its main row's
  assert table.where(1).endswith("mmbench.tsv line 4 (index 1000001)")

  # A table without copies: the added copies report their main row's line.
  data = write_tsv(tmp_path / "plain.tsv", MMBENCH, [
      dict(good, index=7, answer="B", A="red", B="blue"),
      dict(good, index=8, answer="A", A="red", B="blue")])
  table, orphans = runner.read_benchmark(bm.get("mmbench"), data, False, None)
  assert orphans == 0
  assert [(r["index"], n) for r, n in zip(table.rows, table.lines)] == [
      ("7", 2), ("8", 3), ("1000007", 2), ("1000008", 3)]


def test_cli_on_a_fixture_tsv_then_rescoring_without_a_model(trained, tmp_path):
  config, workdir, _ = trained
  data = pope_fixture(tmp_path / "pope.tsv", bad_image=True)
  out = str(tmp_path / "out")
  flags = [f"--config.{k}={v}" for k, v in overrides(config.data.dir).items()]
  run = subprocess.run(
      [sys.executable, "-m", "mma_jax.evaluate", f"--config={CONFIG}", *flags,
       "--config.eval.skip_bad_rows=True", f"--workdir={workdir}", "--benchmark=POPE",
       f"--data={data}", f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "overall/f1" in run.stdout and "YOrN_Extraction" in run.stdout
  results = json.load(open(os.path.join(out, "pope_results.json")))
  assert results["rows"] == 3 and results["skipped_rows"] == 1
  assert set(results["metrics"]) >= {"overall/accuracy", "overall/f1", "random/f1",
                                     "popular/yes_ratio", "adversarial/recall"}
  assert results["decoding"]["method"] == "greedy" and results["checkpoint_step"] == 2
  predictions = os.path.join(out, "pope_predictions.tsv")
  with open(predictions, newline="") as f:
    table = list(csv.DictReader(f, delimiter="\t"))
  assert list(table[0]) == ["index", "question", "answer", "category", "image_path",
                            "prediction"]
  assert [r["index"] for r in table] == ["0", "1", "2"]

  score = subprocess.run(
      [sys.executable, "-m", "mma_jax.evaluate", "score", "--benchmark=pope",
       f"--predictions={predictions}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert score.returncode == 0, score.stderr[-3000:]
  # score writes the same results JSON, keeping what the model run recorded (decoding).
  rescored = json.load(open(os.path.join(out, "pope_results.json")))
  assert rescored["metrics"] == pytest.approx(results["metrics"])
  assert rescored["decoding"] == results["decoding"] and rescored["rule"] == "vlmevalkit"
  bad = subprocess.run(
      [sys.executable, "-m", "mma_jax.evaluate", "score", "--benchmark=pope", "--rule=strict",
       f"--predictions={predictions}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "no scoring rule 'strict'" in bad.stderr
  assert score.stdout.strip() == runner.format_results(
      runner.score_file("pope", predictions)).strip()
  f1 = next(line for line in score.stdout.splitlines() if line.split()[0] == "overall/f1")
  assert float(f1.split()[1]) == pytest.approx(results["metrics"]["overall/f1"], abs=1e-3)
