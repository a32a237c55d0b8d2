#!/usr/bin/env bash
# Why does SFT not fit the hard shapes benchmark? (docs/study/fit/README.md)
# One PT run as the study's (1200 steps), then causal I&T SFT from it, 2400 steps each, seed 0,
# each scored on 600 test and 600 training records (config.eval.train_examples):
#   base        the committed study's causal run
#   tower       the vision tower trained in SFT too (configs/sft_causal_tower.py)
#   data        10x the training records, generated on the fly (60,000)
#   curriculum  1200 steps without distractors and with fewer objects, then 1200 hard
# Two SFT runs at a time, each pinned to one core (run on a 2-core machine).
#   launch/fit_probes.sh WORKDIR
set -euo pipefail
w="${1:?usage: launch/fit_probes.sh WORKDIR}"
mkdir -p "$w"
source "$(dirname "$0")/hard64.sh"
hard=("${HARD64[@]}" --config.data.dir="$w/data")
sft=("${hard[@]}" --config.eval.train_examples=600)
causal=(--config=configs/sft_causal.py "${sft[@]}")
run() {  # NAME CORE ARGS...: one training run, its output in WORKDIR/NAME.log
  local name="$1" core="$2"; shift 2
  if [ -f "$w/$name/results.json" ] || [ -f "$w/$name/.done" ]; then return; fi
  taskset -c "$core" python -m mma_jax.main --workdir="$w/$name" "$@" > "$w/$name.log" 2>&1
  touch "$w/$name/.done"
}
start=$(date +%s)
run pt 0-1 --config=configs/pt.py "${hard[@]}" --config.train.steps=1200
run base 0 "${causal[@]}" --config.init_from="$w/pt" --config.train.steps=2400 &
run tower 1 --config=configs/sft_causal_tower.py "${sft[@]}" --config.init_from="$w/pt" \
  --config.train.steps=2400 &
wait
run data 0 "${causal[@]}" --config.init_from="$w/pt" --config.train.steps=2400 \
  --config.data.on_the_fly=True --config.data.train_size=60000 &
( run easy 1 "${causal[@]}" --config.init_from="$w/pt" --config.train.steps=1200 \
    --config.data.distractors=0.0 --config.data.objects_min=1 --config.data.objects_max=6
  run curriculum 1 "${causal[@]}" --config.init_from="$w/easy" --config.train.steps=1200 ) &
wait
echo "fit probes: $(( $(date +%s) - start )) s"
