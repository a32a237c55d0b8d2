"""The comparison's numbers: mean and 95% interval per (variant, metric), paired t-tests against
causal I&T over seeds, Holm-Bonferroni over each metric's family, and the step-time rows."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mma_jax.study.variants import BASELINE, VARIANTS

CONFIDENCE = 0.95
ALPHA = 0.05
STEP_METRICS = ("step_time_s", "step_time_rel")
TIMED = "timed alone"
LOGGED = "training log"


def paired_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
  """Paired t-test of a against b (matched by seed): (mean difference, t, two-sided p).

  With fewer than two pairs t and p are NaN; with identical differences t is ±inf (p = 0)
  unless they are all 0 (t, p NaN).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top (scipy comes with jax)
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"Paired samples need the same seeds; got {a.size} and {b.size} values.")
  diff = float(np.mean(a - b)) if a.size else float("nan")
  if a.size < 2:
    return diff, float("nan"), float("nan")
  with np.errstate(divide="ignore", invalid="ignore"):
    res = stats.ttest_rel(a, b)
  return diff, float(res.statistic), float(res.pvalue)


def mean_ci(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float, float]:
  """(mean, low, high): the Student-t interval mean ± t(level, n - 1) x std / sqrt(n).

  One value has no interval (low, high NaN); identical values give low = high = mean.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x = np.asarray(values, np.float64)
  mean = float(np.mean(x)) if x.size else float("nan")
  if x.size < 2:
    return mean, float("nan"), float("nan")
  half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * np.std(x, ddof=1) / np.sqrt(x.size))
  return mean, mean - half, mean + half


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p, in the input's order; rejecting where adjusted p < alpha keeps
  the family-wise error rate at alpha.

  The family is the finite p (NaN: no test, passed through). With them sorted p(1) <= ... <=
  p(m), adjusted p(i) = min(1, max over j <= i of (m - j + 1) p(j)).
  """
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  tested = np.flatnonzero(np.isfinite(p))
  order = tested[np.argsort(p[tested], kind="stable")]
  m = order.size
  running = 0.0
  for i, k in enumerate(order):
    running = max(running, (m - i) * p[k])  # the max keeps the adjusted p monotone
    out[k] = min(1.0, running)
  return out.tolist()



def _step_times(results: Mapping[str, dict], variant: str) -> tuple[list, list, str]:
  """(seconds per step, ratios to causal, source) of a variant: the timing pass's one value
  when it timed both the variant and causal, else the per-seed training-log values."""
  r, base = results[variant], results[BASELINE]
  if "timing" in r and "timing" in base:
    t, t0 = r["timing"]["seconds_per_step"], base["timing"]["seconds_per_step"]
    return [t], [t / t0], TIMED
  seeds = [s for s in r["seeds"] if s in base["seeds"]]
  mine = [r["step_time"][r["seeds"].index(s)] for s in seeds]
  return mine, [m / base["step_time"][base["seeds"].index(s)] for m, s in zip(mine, seeds)], \
      LOGGED


def summarize(results: Mapping[str, dict]) -> list[dict]:
  """One row per (variant, metric): n, mean, std (ddof 1), the 95% interval (ci_low, ci_high;
  NaN with one value), values, and the paired difference to causal I&T with its raw p and its
  Holm-adjusted p over the metric's family (holm_m comparisons: every other variant's with a p).

  Metrics 'step_time_s' (seconds per step) and 'step_time_rel' (÷ causal) come from the timing
  pass (one value per variant) or, labelled in 'step_time_source', the training logs (per seed).
  """
  base = results[BASELINE]
  rows = []
  for variant, r in results.items():
    seeds = [base["seeds"].index(s) for s in r["seeds"] if s in base["seeds"]]
    mine = [r["seeds"].index(base["seeds"][i]) for i in seeds]
    seconds, ratio, source = _step_times(results, variant)
    for name, values in list(r["metrics"].items()) + [("step_time_s", seconds),
                                                       ("step_time_rel", ratio)]:
      values = np.asarray(values, np.float64)
      mean, low, high = mean_ci(values)
      row = {"variant": variant, "label": VARIANTS[variant].label, "steps": r["steps"],
             "metric": name, "n": int(values.size), "mean": mean,
             "std": float(np.std(values, ddof=1)) if values.size > 1 else 0.0,
             "ci_low": low, "ci_high": high, "values": values.tolist(),
             "delta_vs_causal": float("nan"), "p_vs_causal": float("nan"),
             "p_holm_vs_causal": float("nan"), "holm_m": 0,
             "step_time_source": source if name in STEP_METRICS else ""}
      if name not in STEP_METRICS and variant != BASELINE:
        a = [values[j] for j in mine]
        b = [base["metrics"][name][i] for i in seeds]
        row["delta_vs_causal"], _, row["p_vs_causal"] = paired_test(a, b)
      rows.append(row)
  for name in {r["metric"] for r in rows} - set(STEP_METRICS):
    family = [r for r in rows if r["metric"] == name and r["variant"] != BASELINE]
    m = sum(np.isfinite(r["p_vs_causal"]) for r in family)
    for r, adjusted in zip(family, holm([r["p_vs_causal"] for r in family])):
      r["p_holm_vs_causal"], r["holm_m"] = adjusted, int(m)
  return rows

