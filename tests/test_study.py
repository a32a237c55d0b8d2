"""The ablation study: plan, reuse of finished runs, report numbers, the paired test, the
confidence intervals, Holm's correction and the step time timed alone."""
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


def test_holm_matches_a_hand_computation():
  # Sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (monotone); 0.20 x 1.
  assert study.holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
  # No test (NaN) is outside the family: m = 2 here; adjusted p stop at 1.
  got = study.holm([0.5, float("nan"), 0.6])
  assert got[0] == got[2] == 1.0 and math.isnan(got[1])
  assert study.holm([0.02]) == [0.02] and study.holm([]) == []


def test_confidence_interval_matches_a_hand_computation():
  x = np.array([0.5, 0.6, 0.8])
  # Student t with 2 degrees of freedom: F(t) = 1/2 + t / (2 sqrt(2 + t^2)) = 0.975.
  t = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))
  half = t * np.std(x, ddof=1) / math.sqrt(3)
  mean, low, high = study.mean_ci(x)
  assert mean == pytest.approx(x.mean())
  assert (low, high) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-9)
  assert study.mean_ci([0.3, 0.3]) == (0.3, 0.3, 0.3)
  mean, low, high = study.mean_ci([0.7])  # one seed: no interval
  assert mean == 0.7 and math.isnan(low) and math.isnan(high)


def test_report_corrects_for_the_comparisons(tmp_path):
  """Five seeds, no training: intervals and Holm-adjusted p in results.csv and report.md; the
  verdict calls a raw p < 0.05 that does not survive the correction what it is."""
  base = np.array([0.70, 0.72, 0.69, 0.71, 0.70])
  scores = {"causal": base, "mma": base + [0.02, 0.01, 0.03, 0.00, 0.02],
            "prefix": base + [0.10, 0.11, 0.10, 0.12, 0.11],
            "dot": base + [0.03, -0.02, 0.04, 0.00, -0.01]}
  seconds = {"causal": 0.010, "mma": 0.012, "prefix": 0.011, "dot": 0.010}
  results = {v: {"steps": 5, "seeds": [0, 1, 2, 3, 4],
                 "metrics": {"accuracy/all": x.tolist(), "accuracy/count": [1.0] * 5},
                 "step_time": [seconds[v]] * 5, "chance": {"accuracy/count": 0.39}}
             for v, x in scores.items()}
  runs = study.plan(str(tmp_path), 5, list(scores), steps=5, pt_steps=3)
  p = {v: study.paired_test(scores[v], base)[2] for v in ("mma", "prefix", "dot")}
  assert p["mma"] < 0.05 and 2 * p["mma"] > 0.05 > 3 * p["prefix"]
  # By hand: prefix is smallest (x 3), then mma (x 2), then dot (x 1).
  want = {"prefix": 3 * p["prefix"], "mma": 2 * p["mma"], "dot": max(2 * p["mma"], p["dot"])}

  paths = study.write_report(str(tmp_path), runs, results)
  with open(paths["csv"]) as f:
    table = {(r["variant"], r["metric"]): r for r in csv.DictReader(f)}
  for v, x in scores.items():
    row = table[v, "accuracy/all"]
    _, low, high = study.mean_ci(x)
    assert float(row["ci_low"]) == pytest.approx(low) and float(row["ci_high"]) == \
        pytest.approx(high) and low < float(row["mean"]) < high and row["n"] == "5"
    if v != "causal":
      assert float(row["p_vs_causal"]) == pytest.approx(p[v])
      assert float(row["p_holm_vs_causal"]) == pytest.approx(want[v]) and row["holm_m"] == "3"
  assert table["mma", "accuracy/count"]["holm_m"] == "0"  # identical scores: no test
  assert table["mma", "step_time_rel"]["step_time_source"] == "training log"
  assert float(table["mma", "step_time_rel"]["mean"]) == pytest.approx(1.2)
  report = open(paths["markdown"]).read()
  mean, low, high = study.mean_ci(scores["dot"])
  assert f"| DOT: T&I then I&T (2x steps) | 5 | {mean:.3f} ± {(high - low) / 2:.3f} |" in report
  assert f"+0.016 (p {p['mma']:.3g} → {want['mma']:.3g})" in report
  assert f"**+0.108 (p {p['prefix']:.3g} → {want['prefix']:.3g})**" in report
  assert "| Holm family size m | 3 | 0 |" in report
  assert "MMA I&T, prefix-LM I&T, DOT: T&I then I&T (2x steps)" in report  # the family
  # Verdict family: MMA against causal, prefix and dot.
  v_p = {o: study.paired_test(scores["mma"], scores[o])[2] for o in ("causal", "prefix", "dot")}
  assert 3 * v_p["prefix"] < 0.05 < 2 * v_p["causal"]
  assert (f"MMA does **not** significantly beat causal I&T: it is ahead by 0.016 overall "
          f"accuracy with paired p = {v_p['causal']:.3g}, Holm-adjusted p = "
          f"{2 * v_p['causal']:.3g} over 5 seeds: p < 0.05 alone, but **not significant after "
          "correction**") in report
  assert ("Family: MMA against each of the 3 other variants on the same data, on overall "
          "accuracy (3 with a test)") in report
  assert "MMA is significantly **worse** than prefix-LM I&T" in report
  assert "significantly beats 0 of 3 baselines" in report
  assert "Step time is from the **training log**" in report

  # Timed alone: one value per variant, used in place of the logs.
  for v in results:
    results[v]["timing"] = {"source": "timed alone", "seconds_per_step": seconds[v] / 2,
                            "intervals": 9, "steps_per_interval": 4}
  rows = {(r["variant"], r["metric"]): r for r in study.summarize(results)}
  assert rows["mma", "step_time_rel"]["values"] == pytest.approx([1.2])
  assert rows["mma", "step_time_s"]["values"] == [0.006]
  assert rows["mma", "step_time_s"]["step_time_source"] == "timed alone"
  study.write_report(str(tmp_path), runs, results)
  report = open(paths["markdown"]).read()
  assert "| 6.00 | 1.20 |" in report and "Step time is **timed alone**" in report


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


def test_mma_in_pt_variant_starts_from_its_own_pt_run():
  runs = study.plan("/tmp/s", 2, ["causal", "mma_pt_prompt"], steps=5, pt_steps=3,
                    overrides={"optim.lr": 1e-3})
  assert [r.name for r in runs] == ["pt", "pt_prompt", "causal/seed0", "causal/seed1",
                                    "mma_pt_prompt/seed0", "mma_pt_prompt/seed1"]
  pt, pt_prompt = runs[0], runs[1]
  assert pt.config.mask == "causal" and pt.config.data.pt_prompt == ""
  assert pt_prompt.config.mask == "mma" and pt_prompt.config.data.pt_prompt == study.PT_PROMPT
  assert pt_prompt.workdir == "/tmp/s/pt_prompt" and pt_prompt.variant == ""
  # The same PT but for mask and prompt: steps, seed, overrides and data.
  assert pt_prompt.config.stage == "pt" and pt_prompt.seed == pt_prompt.config.seed == 0
  assert pt_prompt.total_steps == pt.total_steps == 3
  assert pt_prompt.config.optim.lr == 1e-3 and pt_prompt.config.data.dir == "/tmp/s/data"
  differ = {k for k in pt.config.to_dict() if pt.config[k] != pt_prompt.config[k]}
  assert differ == {"mask", "data"}
  assert {k for k in pt.config.data if pt.config.data[k] != pt_prompt.config.data[k]} == \
      {"pt_prompt"}
  # Its SFT is mma's, from pt_prompt; causal still starts from pt.
  mma = study.plan("/tmp/s", 2, ["causal", "mma"], steps=5, pt_steps=3,
                   overrides={"optim.lr": 1e-3})[-1].config
  sft = runs[-1].config
  assert sft.init_from == "/tmp/s/pt_prompt" and sft.mask == "mma" and sft.stage == "sft"
  assert runs[2].config.init_from == "/tmp/s/pt"
  assert sft.to_dict() == dict(mma.to_dict(), init_from="/tmp/s/pt_prompt")
  # Without the variant there is one PT run, as before.
  assert [r.name for r in study.plan("/tmp/s", 1, ["causal", "mma"]) if not r.variant] == ["pt"]
  # The study sets the mask and the prompt of pt_prompt.
  with pytest.raises(ValueError, match="--config.data.pt_prompt is set by the study for the PT "
                     "run 'pt_prompt'"):
    study.plan("/tmp/s", 1, ["causal", "mma_pt_prompt"],
               overrides={"data.pt_prompt": "what is it ?"})
  with pytest.raises(ValueError, match="--config.mask is set by the study"):
    study.plan("/tmp/s", 1, ["causal", "mma_pt_prompt"], overrides={"mask": "causal"})


def test_two_turn_variants_train_on_their_own_data_and_are_judged_against_each_other(tmp_path):
  """mma_2turn and mma_conversation_2turn set data.turns=2 (nothing else differs from mma and
  mma_conversation); the verdict keeps them out of MMA's family and tests the pair."""
  names = ["causal", "mma", "mma_2turn", "mma_conversation_2turn"]
  runs = study.plan(str(tmp_path), 5, names, steps=5, pt_steps=3)
  by = {r.variant: r.config for r in runs}
  assert by["mma_2turn"].data.turns == by["mma_conversation_2turn"].data.turns == 2
  assert by["mma"].data.turns == by["causal"].data.turns == 1
  assert by["mma_2turn"].to_dict() == dict(by["mma"].to_dict(), data=dict(
      by["mma"].data.to_dict(), turns=2))
  assert by["mma_conversation_2turn"].mask == "mma_conversation"
  assert [r.name for r in runs if not r.variant] == ["pt"]  # the same PT run
  with pytest.raises(ValueError, match="--config.data.turns is set by the study for the "
                     "variant 'mma_2turn'"):
    study.plan(str(tmp_path), 1, names, overrides={"data.turns": 2})
  base = np.array([0.60, 0.62, 0.59, 0.61, 0.60])
  scores = {"causal": base, "mma": base + 0.01 * np.array([1, 2, 0, 1, 3]),
            "mma_2turn": base + 0.01 * np.array([0, 1, 1, 0, 2]),
            "mma_conversation_2turn": base + 0.01 * np.array([6, 9, 7, 8, 6])}
  results = {v: {"steps": 5, "seeds": [0, 1, 2, 3, 4],
                 "metrics": {"accuracy/all": x.tolist()}, "step_time": [0.01] * 5,
                 "chance": {}} for v, x in scores.items()}
  report = open(study.write_report(str(tmp_path), runs, results)["markdown"]).read()
  assert "MMA against each of the 1 other variants on the same data" in report
  assert "MMA − MMA I&T, two-turn records" not in report
  p = study.paired_test(scores["mma_conversation_2turn"], scores["mma_2turn"])[2]
  assert p < 0.05
  assert (f"- MMA across turns, two-turn records (upper bound) − MMA I&T, two-turn records: "
          f"+0.064 (paired p = {p:.3g}, Holm-adjusted p = {p:.3g} over 5 seeds): significant."
          ) in report


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_pt_prompt_uses_only_words_the_shapes_tokenizer_knows(difficulty):
  from mma_jax.data import vocab
  from mma_jax.data.shapes import generate
  assert set(study.PT_PROMPT.split()) <= set(generate.vocabulary(difficulty))
  tok = vocab.shapes_tokenizer(difficulty)
  ids = tok.encode(study.PT_PROMPT)
  assert len(ids) == len(study.PT_PROMPT.split()) and tok.token_id("<unk>") not in ids
  assert tok.decode(ids) == study.PT_PROMPT


def test_tiny_study_reports_results_and_reuses_finished_runs(tmp_path):
  workdir = str(tmp_path / "study")
  kw = dict(seeds=1, variants=["causal", "mma", "mma_pt_prompt"], steps=2, pt_steps=2,
            overrides=TINY, timing_seconds=0.3)
  out = study.run_study(workdir, mechanism_examples=1, **kw)
  assert out["trained"] == ["pt", "pt_prompt", "causal/seed0", "mma/seed0",
                            "mma_pt_prompt/seed0"]
  for v in ("causal", "mma"):
    with open(os.path.join(workdir, "runs", v, "seed0", "results.json")) as f:
      metrics = json.load(f)["metrics"]
    rows = {r["metric"]: r for r in out["rows"] if r["variant"] == v}
    assert set(study.metric_names(metrics)) <= set(rows)
    for name in study.metric_names(metrics):
      assert rows[name]["mean"] == metrics[name] and rows[name]["std"] == 0.0
      assert math.isnan(rows[name]["ci_low"]) and math.isnan(rows[name]["ci_high"])  # 1 seed
    timing = out["results"][v]["timing"]
    assert timing["source"] == "timed alone" and timing["intervals"] >= 3
    assert 0 < timing["seconds_per_step"] <= timing["median_seconds_per_step"]
    assert rows["step_time_s"]["values"] == [timing["seconds_per_step"]]
    assert rows["step_time_rel"]["mean"] > 0
    assert rows["step_time_rel"]["step_time_source"] == "timed alone"
  with open(out["paths"]["csv"]) as f:
    table = {(r["variant"], r["metric"]): r for r in csv.DictReader(f)}
  mma_all = out["results"]["mma"]["metrics"]["accuracy/all"][0]
  assert float(table["mma", "accuracy/all"]["mean"]) == mma_all
  assert table["mma", "accuracy/all"]["ci_low"] == "nan"
  assert table["mma", "step_time_rel"]["step_time_source"] == "timed alone"
  causal_all = out["results"]["causal"]["metrics"]["accuracy/all"][0]
  assert float(table["mma", "accuracy/all"]["delta_vs_causal"]) == pytest.approx(
      mma_all - causal_all)
  report = open(out["paths"]["markdown"]).read()
  assert f"| MMA I&T | 2 | {mma_all:.3f} (no CI) |" in report
  # MMA in PT: its own PT run, described in the setup line, trained on other inputs than pt's.
  assert ("PT 2 steps (and a second PT run, pt_prompt: the same with mask = 'mma' and "
          "data.pt_prompt = 'what is there ?', for MMA I&T after PT with a prompt (MMA in PT)), "
          "then SFT 2 steps per order from its PT checkpoint") in report
  losses = {}
  for name in ("pt", "pt_prompt"):
    with open(os.path.join(workdir, name, "train_log.jsonl")) as f:
      losses[name] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses["pt_prompt"]) == 2 and losses["pt_prompt"] != losses["pt"]
  assert "| MMA I&T after PT with a prompt (MMA in PT) | 2 |" in report
  assert "With one seed there is no interval" in report
  assert "no significance test" in report and "## Mechanism" in report
  assert "Step time is **timed alone**" in report
  assert os.path.getsize(out["paths"]["plot"]) > 0
  assert np.all(np.array(out["mechanism"]["drift"]["causal"]) == 0.0)
  assert os.path.exists(os.path.join(workdir, "mechanism", "attention_0.png"))

  # Everything finished: nothing is trained or timed again, the report is the same.
  again = study.run_study(workdir, mechanism_examples=0, **kw)
  assert again["trained"] == [] and again["results"] == out["results"]
  assert open(out["paths"]["markdown"]).read() == report.split("\n## Mechanism")[0]


def test_parallel_study_trains_the_pt_runs_first(tmp_path, monkeypatch):
  """--jobs=2 with two PT runs: the benchmark is written once here, then both PT runs train at
  once, then each SFT data setting is written once (the two-turn variant has its own), then
  the SFT runs (no training here: the second stage reports a stop)."""
  calls = []
  monkeypatch.setattr(study, "_prepare_data", lambda run: calls.append(("prepare", run.name)))

  def train(todo, jobs, command, pin=False):
    assert any(c.startswith("--variants=causal,mma_pt_prompt,mma_2turn") for c in command)
    calls.append(([r.name for r in todo], jobs))
    return None if todo[0].variant else [r.name for r in todo]
  monkeypatch.setattr(study, "_train_in_processes", train)
  assert study.run_study(str(tmp_path), seeds=1, variants=["causal", "mma_pt_prompt", "mma_2turn"],
                         jobs=2, overrides=TINY) is None
  assert calls == [("prepare", "pt"), (["pt", "pt_prompt"], 2), ("prepare", "causal/seed0"),
                   ("prepare", "mma_2turn/seed0"),
                   (["causal/seed0", "mma_pt_prompt/seed0", "mma_2turn/seed0"], 2)]


def test_runs_in_parallel_processes_train_what_is_left(tmp_path):
  """--jobs=2: PT alone, then the SFT runs two at a time in `--run=NAME` subprocesses; a
  finished run is reused and one with a bad config stops the study naming its log."""
  workdir = str(tmp_path / "study")
  kw = dict(seeds=2, variants=["causal", "mma"], steps=2, pt_steps=2, overrides=TINY,
            mechanism_examples=0, timing_seconds=0.3)
  first = study.run_study(workdir, **dict(kw, variants=["causal"], seeds=1))
  assert first["trained"] == ["pt", "causal/seed0"]
  # Each job on a core of its own where there are two (--pin_jobs).
  out = study.run_study(workdir, jobs=2, pin_jobs=len(os.sched_getaffinity(0)) >= 2, **kw)
  assert sorted(out["trained"]) == ["causal/seed1", "mma/seed0", "mma/seed1"]
  assert out["results"]["causal"]["seeds"] == out["results"]["mma"]["seeds"] == [0, 1]
  # Step times come from the timing pass, after the parallel runs ended, not from their logs;
  # causal's, timed in the first call, is reused.
  timing = os.path.join(workdir, "timing.json")
  assert out["results"]["causal"]["timing"] == first["results"]["causal"]["timing"]
  for r in study.summarize(out["results"]):
    assert r["metric"] not in study.STEP_METRICS or r["step_time_source"] == "timed alone"
  for run in ("mma/seed0", "mma/seed1", "causal/seed1"):
    assert os.path.getmtime(timing) >= os.path.getmtime(
        os.path.join(workdir, "runs", run, "results.json"))
  assert "(chance" in open(os.path.join(workdir, "runs", "mma", "seed1",
                                              "study_run.log")).read()
  # The same seed-0 causal run, so the same metrics as before.
  assert out["results"]["causal"]["metrics"]["accuracy/all"][0] == \
      first["results"]["causal"]["metrics"]["accuracy/all"][0]
  with pytest.raises(RuntimeError, match=r"prefix/seed0 \(exit 2; see .*study_run.log\)"):
    study.run_study(workdir, jobs=2, **dict(kw, variants=["causal", "prefix"],
                                            overrides=dict(TINY, **{"train.grad_accum": 3})))


def test_pinned_jobs_get_cores_of_their_own():
  from mma_jax.study import run as run_lib  # pylint: disable=g-import-not-at-top
  assert run_lib.job_cores(2, [0, 1, 2, 3]) == [{0, 2}, {1, 3}]
  assert run_lib.job_cores(3, [4, 5, 6]) == [{4}, {5}, {6}]
  with pytest.raises(ValueError, match="--pin_jobs: 3 jobs need as many CPU cores"):
    run_lib.job_cores(3, [0, 1])
