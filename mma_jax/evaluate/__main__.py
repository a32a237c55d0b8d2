"""Evaluate a trained run on a benchmark, or re-score a predictions table without a model.

  python -m mma_jax.evaluate --config=configs/sft_mma.py --workdir=DIR --benchmark=pope \\
      --data=POPE.tsv [--out=DIR]       # decode with the workdir's latest checkpoint, then score
  python -m mma_jax.evaluate score --benchmark=pope --predictions=FILE.tsv   # re-score, no model
  ... [--rule=official|strict]   # a benchmark's other scoring rule; default vlmevalkit

A missing or unreadable file, a malformed table or a bad flag is one line and exit status 2
(mma_jax.cli).
"""
from absl import app, flags
from ml_collections import config_flags

from mma_jax import logs

logs.quiet_import("tensorflow")  # before TFDS imports it: its C++ import notices stay out
# pylint: disable=g-import-not-at-top,wrong-import-position
from mma_jax import cli
from mma_jax.evaluate import runner, scoring


def main(argv):
  logs.quiet_libraries()  # libraries' INFO lines only with --verbosity=1
  f = flags.FLAGS
  if len(argv) > 2 or (len(argv) == 2 and argv[1] != "score"):
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; the only subcommand is 'score'.")
  if not f.benchmark:
    raise app.UsageError(f"--benchmark is required: one of {sorted(scoring.REGISTRY)}.")
  config = cli.config()
  if len(argv) == 2:
    if not f.predictions:
      raise app.UsageError("score needs --predictions=FILE.tsv.")
    skip = bool(config and config.eval.skip_bad_rows)
    rule = f.rule or (config.eval.rule if config else "")
    results = runner.score_file(f.benchmark, f.predictions, skip, rule, f.out)
  else:
    if config is None or not f.workdir:
      raise app.UsageError("--config and --workdir are required (or use the 'score' command).")
    if f.rule:
      with config.unlocked():
        config.eval.rule = f.rule
    results = runner.run(config, f.workdir, f.benchmark, f.data, f.out)
  print(runner.format_results(results))


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Config file of the trained run.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "", "The run's workdir: its newest checkpoint that restores "
                      "is evaluated.")
  flags.DEFINE_string("benchmark", "", f"One of {sorted(scoring.REGISTRY)}.")
  flags.DEFINE_string("data", "", "The benchmark's VLMEvalKit TSV; default "
                      "$LMUData/<VLMEvalKit name>.tsv.")
  flags.DEFINE_string("out", "", "Where predictions and results go; default <workdir>/eval "
                      "(score: the predictions' folder; 'none' writes no results JSON).")
  flags.DEFINE_string("rule", "", f"Scoring rule: {scoring.DEFAULT_RULE} (default) or a "
                      "benchmark's other rule (vqav2: official; mmbench: strict); overrides "
                      "config.eval.rule.")
  flags.DEFINE_string("predictions", "", "score: the predictions TSV to score.")


if __name__ == "__main__":
  cli.run_absl(main, _define_flags)
