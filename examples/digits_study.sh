#!/usr/bin/env bash
# The own-data study of README "Measured: a folder dataset casm was not designed on": the digits set,
# trained with the old hard-coded augmentation ("before") and with the own-data options ("after"),
# seeds 0-2, each evaluated with no pixel cut (data.resize=64) and with the old Resize(73)+crop.
#   bash examples/digits_study.sh        (about 30 min on 2 CPU cores; runs/digits_*.log, runs/digits/)
# Killed and restarted it skips finished trainings and resumes an unfinished one.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -d data/digits ] || $PY examples/digits_on_clutter.py data/digits --train 6000 --val 500
COMMON="data.name=folder data.root=data/digits data.num_workers=2 model.width=32 logging.progress_bar=false logging.out_dir=runs/digits"
BEFORE="data.resize=73 data.crop_scale=[0.08,1] data.flip=true casm.warmup_epochs=2"
AFTER="data.crop_scale=[0.5,1] data.flip=false casm.warmup_epochs=4 casm.warmup_accuracy=0.8"
for seed in 0 1 2; do
  for variant in before after; do
    name=${variant}_s${seed}
    opts=$BEFORE; [ $variant = after ] && opts=$AFTER
    run=runs/digits/$name/version_0
    ckpt=$run/checkpoints/last.ckpt
    if [ ! -f "$run/finished.json" ]; then  # a killed run continues from its newest checkpoint
      $PY train.py $COMMON $opts seed=$seed logging.name=$name logging.version=version_0 resume=last >> runs/digits_$name.log 2>&1
      echo '{}' > "$run/finished.json"
    fi
    for resize in 64 73; do
      $PY evaluate.py --checkpoint "$ckpt" methods=[casm] data.resize=$resize out_dir=runs/digits/$name/eval_$resize \
          --no-progress > runs/digits_${name}_eval_$resize.log 2>&1
    done
  done
done
$PY - <<'PY'
import json, statistics as st
for resize in (64, 73):
    for variant in ("before", "after"):
        runs = [json.load(open(f"runs/digits/{variant}_s{s}/eval_{resize}/metrics.json")) for s in (0, 1, 2)]
        cols = {"top-1 %": [r["clean_top1"]["own"] for r in runs], "LE": [r["results"]["casm"]["le"] for r in runs],
                "OM": [r["results"]["casm"]["om"] for r in runs]}
        print(f"eval resize {resize} {variant:6s} " + " | ".join(
            f"{k} {st.mean(v):.3f} ± {st.stdev(v):.3f} ({min(v):.3f}-{max(v):.3f})" for k, v in cols.items()))
PY
