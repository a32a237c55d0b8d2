#!/usr/bin/env bash
# The calibration sweep of the hard design (docs/study/calibration/README.md): each point is the
# study command at one setting, one seed, causal and MMA (PT, then SFT from it), two points at
# once, each pinned to one core of the 2-core VM:
#   A  existence x3 + attribute_shape, 2-4 objects, no distractors,  SFT 800 steps
#   B  existence x3,                   2-4 objects, half distractors, SFT 800 steps
#   C  existence x3 + attribute_shape, 3-6 objects, half distractors, SFT 600 steps
#   D  existence x3 + attribute_shape, 4-8 objects, all distractors,  SFT 600 steps
# then, after the study: E (as C with 3-5 objects) and C's causal seeds 1 and 2.
# The first study took 2-5 objects without a point of its own; the committed study takes C
# (launch/study_calibrated.sh).
#   launch/calibration.sh WORKDIR
set -euo pipefail
w="${1:?usage: launch/calibration.sh WORKDIR}"
mkdir -p "$w"
source "$(dirname "$0")/hard64.sh"
point() {  # NAME CORE FLAGS...: one point; its output in WORKDIR/NAME.log
  local name="$1" core="$2"; shift 2
  local start; start=$(date +%s)
  taskset -c "$core" python -m mma_jax.study --workdir="$w/$name" --variants=causal,mma \
    --seeds=1 --jobs=1 --timing_seconds=0 --mechanism_examples=0 --pt_steps=1200 \
    "${HARD64[@]}" --config.data.on_the_fly=True "$@" > "$w/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s"
}
point A 0 --steps=800 --config.data.question_types=$FOUR_TYPES --config.data.objects_min=2 \
  --config.data.objects_max=4 --config.data.distractors=0.0 &
point B 1 --steps=800 --config.data.question_types=${FOUR_TYPES%,attribute_shape} \
  --config.data.objects_min=2 --config.data.objects_max=4 --config.data.distractors=0.5 &
wait
point C 0 --steps=600 --config.data.question_types=$FOUR_TYPES --config.data.objects_min=3 \
  --config.data.objects_max=6 --config.data.distractors=0.5 &
point D 1 --steps=600 --config.data.question_types=$FOUR_TYPES --config.data.objects_min=4 \
  --config.data.objects_max=8 --config.data.distractors=1.0 &
wait
point E 0 --steps=600 --config.data.question_types=$FOUR_TYPES --config.data.objects_min=3 \
  --config.data.objects_max=5 --config.data.distractors=0.5 &
# C again with causal seeds 1 and 2 (its PT and seed 0 reused; a later flag wins)
point C_seeds 1 --steps=600 --workdir="$w/C" --variants=causal --seeds=3 \
  --config.data.question_types=$FOUR_TYPES --config.data.objects_min=3 \
  --config.data.objects_max=6 --config.data.distractors=0.5 &
wait
