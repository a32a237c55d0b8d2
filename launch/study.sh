#!/usr/bin/env bash
# The MMA ablation study (mma_jax/study/): one PT run, then SFT for causal I&T, reversed T&I,
# DOT, causal with DOT's doubled budget, MMA and prefix-LM over 5 seeds, then the report.
#   launch/study.sh runs/study [--seeds=5] [--steps=N] [--pt_steps=N] [--timing_seconds=2]
#                              [--jobs=N [--pin_jobs]]
#                              [--config.KEY=VALUE ...]
# Rerun the same command after an interruption: finished runs are reused, the others resume.
set -euo pipefail
workdir="${1:?usage: launch/study.sh WORKDIR [flags of python -m mma_jax.study]}"
shift
exec python -m mma_jax.study --workdir="$workdir" "$@"
