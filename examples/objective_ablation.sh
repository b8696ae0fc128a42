#!/usr/bin/env bash
# The objective ablation of README "Beyond the paper: masked-in objective, smoothness, fills": the
# default run with today's objective, + a masked-in term, + masked-in + total variation, and each fill
# of the removed pixels, seeds 0-2; every run evaluated against one independent judge (a classifier
# trained alone, seed 100) and summarized as mean +- sd.
#   bash examples/objective_ablation.sh     (about 1.5-2 h on 2 CPU cores, 18 runs + 18 evaluations; runs/ablation/, runs/ablation_*.log)
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=runs/ablation
COMMON="logging.progress_bar=false logging.out_dir=$OUT logging.version=version_0"
judge=$OUT/judge/version_0/checkpoints/last.ckpt
if [ ! -f "$OUT/judge/version_0/finished.json" ]; then
  $PY train.py --config configs/classifier_only.yaml seed=100 logging.name=judge $COMMON resume=last \
      >> runs/ablation_judge.log 2>&1
  echo '{}' > "$OUT/judge/version_0/finished.json"
fi
declare -A VARIANTS=(
  [paper]=""
  [masked_in]="casm.lambda_in=0.1"
  [masked_in_tv]="casm.lambda_in=0.1 casm.lambda_tv=1"
  [fill_blur]="casm.fill=blur"
  [fill_telea]="casm.fill=telea"
  [fill_noise]="casm.fill=noise"
)
for variant in paper masked_in masked_in_tv fill_blur fill_telea fill_noise; do  # whole rows first
  for seed in 0 1 2; do
    name=${variant}_s${seed}
    run=$OUT/$name/version_0
    ckpt=$run/checkpoints/last.ckpt
    if [ ! -f "$run/finished.json" ] && [ ! -f "$OUT/$name/eval/metrics.json" ]; then
      # a killed run continues from its newest checkpoint (interrupted.ckpt is written on SIGTERM/Ctrl-C)
      $PY train.py ${VARIANTS[$variant]} seed=$seed logging.name=$name $COMMON resume=last >> runs/ablation_$name.log 2>&1
      echo '{}' > "$run/finished.json"
    fi
    [ -f "$OUT/$name/eval/metrics.json" ] || $PY evaluate.py --checkpoint "$ckpt" methods=[casm] "classifiers=[$judge]" \
        max_images_slow=100 out_dir=$OUT/$name/eval --no-progress > runs/ablation_${name}_eval.log 2>&1
  done
done
$PY examples/ablation_table.py $OUT paper masked_in masked_in_tv fill_blur fill_telea fill_noise
