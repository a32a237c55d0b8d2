"""The ablation study: plan, reuse of finished runs, report numbers, the paired test."""
import csv
import json
import math
import os

import numpy as np
import pytest

from mma_jax import study

# Tiny runs.
TINY = {"model.vision.image_size": 16, "model.vision.hidden": 32, "model.vision.layers": 1,
        "model.vision.heads": 2, "model.vision.mlp_dim": 64, "model.llm.hidden": 64,
        "model.llm.layers": 1, "model.llm.heads": 2, "model.llm.kv_heads": 1,
        "model.llm.head_dim": 32, "model.llm.mlp_dim": 128, "data.train_size": 48,
        "data.validation_size": 6, "data.test_size": 12, "data.pack_length": 96,
        "data.prefetch": 0, "train.batch_size": 4, "train.log_every": 1,
        "train.async_checkpoint": False, "optim.warmup_steps": 1, "eval.batch_size": 12,
        "eval.prompt_length": 64}


def test_paired_test_matches_a_hand_computation():
  a, b = [0.5, 0.6, 0.8], [0.4, 0.55, 0.6]
  d = np.array(a) - np.array(b)
  t = d.mean() / (math.sqrt(np.sum((d - d.mean()) ** 2) / 2) / math.sqrt(3))
  p = 1 - abs(t) / math.sqrt(2 + t * t)  # Student t, 2 degrees of freedom, two-sided
  diff, t_got, p_got = study.paired_test(a, b)
  assert diff == pytest.approx(d.mean()) and t_got == pytest.approx(t)
  assert p_got == pytest.approx(p, rel=1e-9)
  assert all(math.isnan(x) for x in study.paired_test([0.5], [0.4])[1:])  # one seed: no test


def test_plan_and_overrides():
  runs = study.plan("/tmp/s", 2, ["causal", "dot", "causal_2x"], steps=5, pt_steps=3,
                    overrides={"optim.lr": 1e-3, "optim.freeze": ("x/.*",)})
  assert [r.name for r in runs] == ["pt", "causal/seed0", "causal/seed1", "dot/seed0",
                                    "dot/seed1", "causal_2x/seed0", "causal_2x/seed1"]
  assert [r.total_steps for r in runs] == [3, 5, 5, 10, 10, 10, 10]  # DOT and its control
  assert all(r.config.optim.lr == 1e-3 and r.config.optim.freeze == ("x/.*",) for r in runs)
  assert {r.config.data.dir for r in runs} == {"/tmp/s/data"}
  assert runs[4].config.seed == runs[4].config.data.shuffle_seed == 1
  assert runs[3].config.init_from == "/tmp/s/pt" and runs[3].config.data.order == "DOT"
  with pytest.raises(KeyError, match="optim.lrr"):
    study.plan("/tmp/s", 1, ["causal"], overrides={"optim.lrr": 1.0})
  with pytest.raises(ValueError, match="--config.mask is set by the study"):
    study.plan("/tmp/s", 1, ["causal"], overrides={"mask": "mma"})
  with pytest.raises(ValueError, match="must include 'causal'"):
    study.plan("/tmp/s", 1, ["mma"])


def test_tiny_study_reports_results_and_reuses_finished_runs(tmp_path):
  workdir = str(tmp_path / "study")
  kw = dict(seeds=1, variants=["causal", "mma"], steps=2, pt_steps=2, overrides=TINY)
  out = study.run_study(workdir, mechanism_examples=1, **kw)
  assert out["trained"] == ["pt", "causal/seed0", "mma/seed0"]
  for v in ("causal", "mma"):
    with open(os.path.join(workdir, "runs", v, "seed0", "results.json")) as f:
      metrics = json.load(f)["metrics"]
    rows = {r["metric"]: r for r in out["rows"] if r["variant"] == v}
    assert set(study.metric_names(metrics)) <= set(rows)
    for name in study.metric_names(metrics):
      assert rows[name]["mean"] == metrics[name] and rows[name]["std"] == 0.0
    assert rows["step_time_rel"]["mean"] > 0
  with open(out["paths"]["csv"]) as f:
    table = {(r["variant"], r["metric"]): r for r in csv.DictReader(f)}
  mma_all = out["results"]["mma"]["metrics"]["accuracy/all"][0]
  assert float(table["mma", "accuracy/all"]["mean"]) == mma_all
  causal_all = out["results"]["causal"]["metrics"]["accuracy/all"][0]
  assert float(table["mma", "accuracy/all"]["delta_vs_causal"]) == pytest.approx(
      mma_all - causal_all)
  report = open(out["paths"]["markdown"]).read()
  assert f"| MMA I&T | 2 | {mma_all:.3f} ± 0.000" in report
  assert "no significance test" in report and "## Mechanism" in report
  assert os.path.getsize(out["paths"]["plot"]) > 0
  assert np.all(np.array(out["mechanism"]["drift"]["causal"]) == 0.0)
  assert os.path.exists(os.path.join(workdir, "mechanism", "attention_0.png"))

  # Everything finished: nothing is trained again, the report is the same.
  again = study.run_study(workdir, mechanism_examples=0, **kw)
  assert again["trained"] == [] and again["results"] == out["results"]


def test_runs_in_parallel_processes_train_what_is_left(tmp_path):
  """--jobs=2: PT alone, then the SFT runs two at a time in `--run=NAME` subprocesses; a
  finished run is reused and one with a bad config stops the study naming its log."""
  workdir = str(tmp_path / "study")
  kw = dict(seeds=2, variants=["causal", "mma"], steps=2, pt_steps=2, overrides=TINY,
            mechanism_examples=0)
  first = study.run_study(workdir, **dict(kw, variants=["causal"], seeds=1))
  assert first["trained"] == ["pt", "causal/seed0"]
  out = study.run_study(workdir, jobs=2, **kw)
  assert sorted(out["trained"]) == ["causal/seed1", "mma/seed0", "mma/seed1"]
  assert out["results"]["causal"]["seeds"] == out["results"]["mma"]["seeds"] == [0, 1]
  assert "(chance" in open(os.path.join(workdir, "runs", "mma", "seed1",
                                              "study_run.log")).read()
  # The same seed-0 causal run, so the same metrics as before.
  assert out["results"]["causal"]["metrics"]["accuracy/all"][0] == \
      first["results"]["causal"]["metrics"]["accuracy/all"][0]
  with pytest.raises(RuntimeError, match=r"prefix/seed0 \(exit 1; see .*study_run.log\)"):
    study.run_study(workdir, jobs=2, **dict(kw, variants=["causal", "prefix"],
                                            overrides=dict(TINY, **{"train.grad_accum": 3})))
