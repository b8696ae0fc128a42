#!/usr/bin/env bash
# The sanity checks of README "Sanity checks", on the built-in data:
#  1. python -m casm sanity on the default run (seed 0): attacks T1-T4 on its classifier, randomization
#     cascades of its classifier (each CAM method) and of its masker;
#  2. casm under attack: maskers trained against one fixed classifier (F strategy, 5 epochs) and against
#     each attacked copy of it (T1-T4), seeds 0-2, the same data order and initialization per seed;
#  3. the data-randomization test: the default run on shuffled labels, seeds 0-2.
# Every masker is evaluated (methods=[casm], the fixed classifier as judge); examples/sanity_table.py
# prints the tables.
#   bash examples/sanity_study.sh     (about 2-2.5 h on 2 CPU cores, 20 trainings + 18 evaluations; runs/sanity/)
# Killed and restarted it skips finished runs and resumes an unfinished one from its newest checkpoint.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=runs/sanity
COMMON="logging.progress_bar=false logging.out_dir=$OUT logging.version=version_0"

train() {  # train NAME OVERRIDES...: once; a killed run resumes
  local name=$1; shift
  local run=$OUT/$name/version_0
  [ -f "$run/finished.json" ] && return
  $PY train.py "$@" logging.name=$name $COMMON resume=last >> runs/sanity_$name.log 2>&1
  echo '{}' > "$run/finished.json"
}

evaluate() {  # evaluate NAME: methods=[casm], the fixed classifier as judge
  [ -f "$OUT/$1/eval/metrics.json" ] || $PY evaluate.py --checkpoint "$OUT/$1/version_0/checkpoints/last.ckpt" \
      methods=[casm] "classifiers=[$classifier]" max_images_slow=100 out_dir=$OUT/$1/eval --no-progress > runs/sanity_$1_eval.log 2>&1
}

classifier=$OUT/classifier/version_0/checkpoints/last.ckpt  # trained alone, seed 100
train classifier --config configs/classifier_only.yaml seed=100
train default_s0 seed=0
[ -f "$OUT/default_s0/version_0/sanity/sanity.json" ] || $PY -m casm sanity \
    --checkpoint $OUT/default_s0/version_0/checkpoints/last.ckpt --images 100 --slow-images 16 > runs/sanity_report.log 2>&1

MASKER="casm.thinning=F casm.warmup_epochs=0 trainer.max_epochs=5 masker.encoder=separate \
model.pretrained=$classifier masker.encoder_pretrained=$classifier"
for variant in original T1 T2 T3 T4; do
  for seed in 0 1 2; do
    attack=""
    [ "$variant" = original ] || attack="model.manipulation=$variant"
    train ${variant}_s$seed $MASKER $attack seed=$seed
    evaluate ${variant}_s$seed
  done
done
for seed in 0 1 2; do
  train shuffled_s$seed data.shuffle_labels=true seed=$seed
  evaluate shuffled_s$seed
done
$PY examples/sanity_table.py $OUT
