#!/usr/bin/env bash
# The committed study at the calibrated setting, point C of the calibration
# (docs/study/calibrated_c/README.md): the hard design with 3-6 objects, half the distractors
# and four question types (POPE's three existence probes and attribute_shape), tiny model at
# 64 px, PT 1200 + SFT 600 steps, 5 seeds of causal, reversed, DOT, prefix, MMA, MMA after PT
# with a prompt, and the two-turn pair (mma vs mma_conversation on data.turns=2). Two pinned
# jobs: sized for the 2-core CPU VM (about 95 min); on one GPU use --jobs=1 and drop --pin_jobs
# (the numbers then differ in the last bits). The first study (docs/study/calibrated/) is this
# command with --config.data.objects_min=2 --config.data.objects_max=5 (a later flag wins).
#   launch/study_calibrated.sh WORKDIR [more flags of python -m mma_jax.study]
set -euo pipefail
w="${1:?usage: launch/study_calibrated.sh WORKDIR [flags]}"
shift
source "$(dirname "$0")/hard64.sh"
exec python -m mma_jax.study --workdir="$w" \
  --variants=causal,reversed,dot,prefix,mma,mma_pt_prompt,mma_2turn,mma_conversation_2turn \
  --seeds=5 --steps=600 --pt_steps=1200 --jobs=2 --pin_jobs --mechanism_examples=3 \
  "${HARD64[@]}" --config.data.on_the_fly=True --config.data.question_types="$FOUR_TYPES" \
  --config.data.objects_min=3 --config.data.objects_max=6 --config.data.distractors=0.5 "$@"
