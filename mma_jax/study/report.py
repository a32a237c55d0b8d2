"""The report: report.md (setup, accuracy and difference tables, verdict, step-time note,
mechanism), results.csv (one row per variant and metric) and study.png."""
from __future__ import annotations

import csv
import os
from typing import Mapping, Sequence

import numpy as np

from mma_jax.study.planning import Run
from mma_jax.study.results import metric_names
from mma_jax.study.statistics import (ALPHA, CONFIDENCE, LOGGED, TIMED, holm, paired_test,
                                      summarize)
from mma_jax.study.variants import BASELINE, PT_RUNS, VARIANTS


def _fmt(x: float, digits: int = 3) -> str:
  return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


def _short(metric: str) -> str:
  return {"accuracy/all": "all", "f1/exist": "F1 exist"}.get(metric, metric.split("/", 1)[-1])


def _mean_ci(row: Mapping, digits: int = 3) -> str:
  """'mean ± half-width' of the 95% interval; 'mean (no CI)' when there is none."""
  if not np.isfinite(row["ci_low"]):
    return f"{_fmt(row['mean'], digits)} (no CI)"
  return f"{row['mean']:.{digits}f} ± {(row['ci_high'] - row['ci_low']) / 2:.{digits}f}"


def _p(p: float) -> str:
  return "n/a" if not np.isfinite(p) else f"{p:.3g}"


def _paired(results, a: str, b: str, metric: str = "accuracy/all"):
  """(seeds both have, mean difference a - b, two-sided p) of a metric, paired by seed."""
  seeds = [s for s in results[a]["seeds"] if s in results[b]["seeds"]]
  pick = lambda v: [results[v]["metrics"][metric][results[v]["seeds"].index(s)] for s in seeds]
  diff, _, p = paired_test(pick(a), pick(b))
  return len(seeds), diff, p


def _verdict(results) -> list[str]:
  """Plain sentences: does MMA beat causal I&T and the other baselines on overall accuracy?

  The family is MMA against each other variant trained on the same data, on overall accuracy;
  a win needs a positive difference with Holm-adjusted p < ALPHA over that family. A variant
  on other data (Variant.overrides, e.g. two-turn records) is tested against its own
  Variant.against instead, in a family of those tests.
  """
  if "mma" not in results:
    return ["MMA was not part of this study (--variants), so there is no verdict on it."]
  n = len(results["mma"]["seeds"])
  others = [v for v in results if v != "mma" and not VARIANTS[v].overrides]
  tests = [(other, *_paired(results, "mma", other)) for other in others]
  adjusted = holm([p for *_, p in tests])
  m = int(np.sum(np.isfinite([p for *_, p in tests])))
  lines, wins = [], 0
  for (other, k, diff, p), q in zip(tests, adjusted):
    name = VARIANTS[other].label
    how = "is ahead by" if diff > 0 else "is behind by" if diff < 0 else "ties at"
    stats = f"paired p = {_p(p)}, Holm-adjusted p = {_p(q)} over {k} seeds"
    if not np.isfinite(p):
      lines.append(f"- MMA − {name}: {diff:+.3f} overall accuracy; with {k} seed(s) (or "
                   "identical differences) there is no significance test, so no claim either way.")
    elif diff > 0 and q < ALPHA:
      wins += 1
      lines.append(f"- MMA beats {name}: {diff:+.3f} overall accuracy, {stats}.")
    elif diff > 0 and p < ALPHA:
      lines.append(f"- MMA does **not** significantly beat {name}: it is ahead by {diff:.3f} "
                   f"overall accuracy with {stats}: p < {ALPHA} alone, but **not significant "
                   "after correction**.")
    elif diff < 0 and q < ALPHA:
      lines.append(f"- MMA is significantly **worse** than {name}: behind by {-diff:.3f} overall "
                   f"accuracy, {stats}.")
    else:
      lines.append(f"- MMA does **not** significantly beat {name}: it {how} {abs(diff):.3f} "
                   f"overall accuracy, {stats}.")
  head = (f"MMA beats all {len(lines)} baselines at this scale ({n} seeds, Holm-corrected)."
          if wins == len(lines) else
          f"At this scale MMA significantly beats {wins} of {len(lines)} baselines ({n} seed(s); "
          f"adjusted p < {ALPHA}); the claim is not reproduced where it does not.")
  family = (f"Family: MMA against each of the {len(others)} other variants on the same data, on "
            "overall accuracy" + (f" ({m} with a test); p adjusted by Holm–Bonferroni over those "
                                  f"{m}." if m else "; none has a test, so there is nothing to "
                                  "correct."))
  return [head, "", family, ""] + lines + _own_data_verdict(results)


def _own_data_verdict(results) -> list[str]:
  """Each variant on data of its own against its Variant.against (Holm over these tests)."""
  pairs = [(v, VARIANTS[v].against) for v in results
           if VARIANTS[v].against and VARIANTS[v].against in results]
  if not pairs:
    return []
  tests = [(v, w, *_paired(results, v, w)) for v, w in pairs]
  lines = ["", "On data of their own (Variant.overrides; scored on the same test questions), "
           "each against the variant it isolates, overall accuracy, Holm over these "
           f"{len(tests)}:", ""]
  for (v, w, k, diff, p), q in zip(tests, holm([t[-1] for t in tests])):
    sig = ("significant" if np.isfinite(q) and q < ALPHA else "not significant")
    lines.append(f"- {VARIANTS[v].label} − {VARIANTS[w].label}: {diff:+.3f} (paired p = "
                 f"{_p(p)}, Holm-adjusted p = {_p(q)} over {k} seeds): {sig}.")
  return lines


def write_report(workdir: str, runs: Sequence[Run], results: Mapping[str, dict],
                 mechanism_result: Mapping | None = None) -> dict[str, str]:
  """report.md, results.csv and study.png under workdir; returns their paths."""
  rows = summarize(results)
  paths = {"markdown": os.path.join(workdir, "report.md"),
           "csv": os.path.join(workdir, "results.csv"),
           "plot": os.path.join(workdir, "study.png")}
  _write_csv(paths["csv"], rows)
  metrics = metric_names(results[BASELINE]["metrics"])
  by = {(r["variant"], r["metric"]): r for r in rows}
  md = (_setup_lines(runs, len(results[BASELINE]["seeds"]))
        + _accuracy_table(results, by, metrics) + _difference_table(results, by, metrics)
        + ["", "## Verdict", ""] + _verdict(results)
        + ["", _step_time_note(results, by) + " DOT and causal 2x also take twice the steps.",
           "", "![results](study.png)"]
        + _mechanism_lines(mechanism_result))
  with open(paths["markdown"], "w") as f:
    f.write("\n".join(md) + "\n")
  plot(results, rows, metrics, paths["plot"])
  return paths


def _write_csv(path: str, rows: Sequence[dict]) -> None:
  fields = ["variant", "label", "steps", "metric", "n", "mean", "std", "values",
            "delta_vs_causal", "p_vs_causal", "ci_low", "ci_high", "p_holm_vs_causal", "holm_m",
            "step_time_source"]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow(dict(r, values=";".join(repr(x) for x in r["values"])))


def _setup_lines(runs: Sequence[Run], n_seeds: int) -> list[str]:
  """The title and what was trained on what."""
  pt = runs[0].config
  sft = next(r for r in runs if r.variant == BASELINE).config
  m = sft.model.llm
  more = ""
  for r in runs[1:]:  # the PT runs past the first: what they change, who starts from them
    if not r.variant:
      users = dict.fromkeys(VARIANTS[x.variant].label for x in runs
                            if x.variant and VARIANTS[x.variant].pt == r.name)
      more += (f" (and a second PT run, {r.name}: the same with "
               + " and ".join(f"{k} = {v!r}" for k, v in PT_RUNS[r.name].items())
               + f", for {', '.join(users)})")
  return ["# The MMA ablation at small scale", "",
          f"PT {pt.train.steps} steps{more}, then SFT {sft.train.steps} steps per order from "
          f"{'its PT' if more else 'that'} checkpoint (DOT and causal 2x: "
          f"{2 * sft.train.steps}); "
          f"{n_seeds} seed(s) per variant (seed = config.seed and the data "
          f"shuffling); batch {sft.train.batch_size} x {sft.data.pack_length} tokens; LLM "
          f"{m.layers} layers x {m.hidden}; train/test {sft.data.train_size}/"
          f"{sft.data.test_size} records of the built-in shapes benchmark "
          f"({sft.data.get('difficulty', 'easy')}).", ""]


def _accuracy_table(results, by, metrics) -> list[str]:
  """Mean ± CI per variant and metric, step time, and the chance row."""
  n_seeds = len(results[BASELINE]["seeds"])
  md = [f"## Test accuracy (mean ± {CONFIDENCE:.0%} confidence interval over seeds)", "",
        f"± is the half-width of a Student-t {CONFIDENCE:.0%} interval over the n seeds (n − 1 "
        "degrees of freedom); results.csv has its ends (ci_low, ci_high) and the std."
        + (" With one seed there is no interval ('no CI')." if n_seeds < 2 else ""), "",
        "| variant | steps | " + " | ".join(_short(x) for x in metrics)
        + " | step time (ms) | ÷ causal |",
        "|" + " --- |" * (len(metrics) + 4)]
  for v in results:
    cells = [_mean_ci(by[v, x]) for x in metrics]
    ms = dict(by[v, "step_time_s"], **{k: 1e3 * by[v, "step_time_s"][k]
                                       for k in ("mean", "ci_low", "ci_high")})
    if ms["step_time_source"] == TIMED:  # one measurement per variant: no interval to give
      cells += [_fmt(ms["mean"], 2), _fmt(by[v, "step_time_rel"]["mean"], 2)]
    else:
      cells += [_mean_ci(ms, 2), _mean_ci(by[v, "step_time_rel"], 2)]
    md.append(f"| {VARIANTS[v].label} | {results[v]['steps']} | " + " | ".join(cells) + " |")
  chance = results[BASELINE]["chance"]
  md.append("| chance (majority answer) | | "
            + " | ".join(_fmt(chance.get(x, float("nan"))) for x in metrics) + " | | |")
  return md


def _difference_table(results, by, metrics) -> list[str]:
  """Each variant minus causal I&T with raw and Holm-adjusted p, and the family size."""
  others = [v for v in results if v != BASELINE]
  md = ["", "## Difference to causal I&T (paired over seeds: raw p of a paired t-test → "
        "Holm-adjusted p)", "",
        f"Family, for each metric: the comparisons with causal I&T of "
        f"{', '.join(VARIANTS[v].label for v in others) or 'no other variant'} — those with a "
        "test (a single seed or identical differences give none); m below. Holm–Bonferroni "
        f"keeps the chance of any false difference in a metric's family under {ALPHA}; "
        f"**bold**: adjusted p < {ALPHA}.", "",
        "| variant | " + " | ".join(_short(x) for x in metrics) + " |",
        "|" + " --- |" * (len(metrics) + 1)]

  def diff_cell(r):
    text = (f"{r['delta_vs_causal']:+.3f} (p {_p(r['p_vs_causal'])} → "
            f"{_p(r['p_holm_vs_causal'])})")
    return f"**{text}**" if r["p_holm_vs_causal"] < ALPHA else text

  for v in others:
    md.append(f"| {VARIANTS[v].label} | " + " | ".join(diff_cell(by[v, x]) for x in metrics)
              + " |")
  if others:
    md.append("| Holm family size m | " + " | ".join(str(by[others[0], x]["holm_m"])
                                                    for x in metrics) + " |")
  return md


def _step_time_note(results, by) -> str:
  """How the step-time column was measured."""
  sources = {by[v, "step_time_rel"]["step_time_source"] for v in results}
  if sources == {TIMED}:
    t = results[BASELINE]["timing"]
    return (f"Step time is **{TIMED}**: after training, this process ran each variant's train "
            "step (fresh parameters, one batch already on the device; no data loading) by "
            "itself, one variant after another, in intervals of several steps for a few seconds "
            f"(causal: {t['intervals']} intervals of {t['steps_per_interval']} steps), and took "
            "the minimum over intervals of seconds per step: other jobs on the machine can only "
            "add time, and no run trained in parallel enters it. One value per variant, so no "
            "interval; the ratio divides it by causal's.")
  return (f"Step time is from the **{LOGGED}** (the variants were not all timed alone: "
          "--timing_seconds=0): per run, the minimum seconds per step over train_log.jsonl's "
          "logging intervals (the first left out), divided by the causal run's of the same "
          "seed. Runs trained at once (--jobs > 1) or beside other jobs share the machine, so "
          "these times can be confounded.")


def _mechanism_lines(mechanism_result) -> list[str]:
  """The drift table and the pictures, when the mechanism pictures were made."""
  if not mechanism_result:
    return []
  layers = len(next(iter(mechanism_result["drift"].values())))
  md = ["", "## Mechanism (seed 0)", "",
        "Cosine distance between the image tokens' hidden states when the same image is asked "
        "two different questions, mean over pairs, per layer (0 = input embeddings):", "",
        "| run | " + " | ".join(str(i) for i in range(layers)) + " |",
        "|" + " --- |" * (1 + layers)]
  for label, d in mechanism_result["drift"].items():
    md.append(f"| {label} | " + " | ".join(f"{np.mean(x):.2e}" for x in d) + " |")
  return md + ["", "Under causal the image tokens come before the question, so their states are "
               "identical whatever is asked (distance exactly 0); under MMA they read the "
               "question.", ""] + [f"![{os.path.basename(p)}](mechanism/{os.path.basename(p)})"
                                   for p in mechanism_result["files"]]


def plot(results, rows, metrics, path: str) -> None:
  """Bars: mean ± 95% interval per metric and variant (none with one seed); the step-time
  ratios."""
  from mma_jax import mechanism
  by = {(r["variant"], r["metric"]): r for r in rows}
  half = lambda r: (r["ci_high"] - r["ci_low"]) / 2 if np.isfinite(r["ci_low"]) else 0.0
  variants = list(results)
  fig = mechanism.figure(figsize=(12, 4))
  ax, ax_t = fig.subplots(1, 2, width_ratios=[4, 1])
  width = 0.8 / len(variants)
  x = np.arange(len(metrics))
  for n, v in enumerate(variants):
    ax.bar(x + n * width, [by[v, m]["mean"] for m in metrics], width,
           yerr=[half(by[v, m]) for m in metrics], label=VARIANTS[v].label, capsize=2)
    t = by[v, "step_time_rel"]
    ax_t.bar(n, t["mean"], yerr=half(t), color=f"C{n}", capsize=2)
  chance = results[BASELINE]["chance"]
  ax.scatter(x + 0.4 - width / 2, [chance.get(m, np.nan) for m in metrics], marker="_", s=400,
             color="k", label="chance", zorder=3)
  # Many metrics (the hard benchmark has 8): slanted names do not overlap.
  ax.set_xticks(x + 0.4 - width / 2, [_short(m) for m in metrics], rotation=30, ha="right",
                fontsize=8)
  ax.set_ylabel(f"test score (mean ± {CONFIDENCE:.0%} CI over seeds)")
  ax.set_ylim(0, 1.05)
  ax.legend(fontsize=7, ncol=2)
  ax_t.axhline(1.0, color="k", lw=0.8)
  ax_t.set_xticks(range(len(variants)), variants, rotation=45, fontsize=7)
  source = by[BASELINE, "step_time_rel"]["step_time_source"]
  ax_t.set_ylabel(f"train-step time ÷ causal ({source})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)

