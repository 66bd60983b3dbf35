#!/usr/bin/env bash
# One GPU session: throughput side by side, re-initialization overhead, then parts of studies/paper.yaml
# until TOTAL_S seconds (from the start) are spent. Everything it measures lands in $OUT (JSON, CSV, a tarball of the run
# directories without checkpoints). Run from the repository root on the GPU machine:
#
#   OUT=out/device TOTAL_S=530 bash benchmarks/device_session.sh
#
# The GPU machine has torch, timm, lightning, torchmetrics but no internet. It needs the git-ignored
# folder $CARRY (default .gpu; built here by `benchmarks/prepare_device_carry.py --out DIR`, carried with
# the call): wheels, the weight/data files at their package paths, Br35H re-encoded for the benchmark.
# The benchmarks run when $CARRY/br35h is there; the study when CELL names a model x dataset cell, e.g.
# CELL="model=mobilenetv2_100 data=br35h" (its weights and dataset cache carried); PARTS picks the
# training-set sizes, smallest first. The study resumes from docs/results/paper/runs*.tgz (finished runs of
# earlier sessions under the current study file, no checkpoints; one archive per batch of cells).
set -u
OUT=${OUT:-out/device}
CARRY=${CARRY:-.gpu}   # e.g. .gpu-bench and .gpu-study, built in advance, one per call
END=$((SECONDS + ${TOTAL_S:-530}))
PARTS=${PARTS:-"0.05 0.25 1.0"}
CELL=${CELL:-}
BENCH=${BENCH:-"--batch_size 128 --steps 100 --sizes [128,224]"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 REPLAST_CACHE=/tmp/replast-cache OMP_NUM_THREADS=2
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/whl/*.whl || exit 1
export PYTHONPATH="$PWD/src:/tmp/site:$PWD/$CARRY/site"
mkdir -p "$REPLAST_CACHE"
for f in "$CARRY"/cache/*.gz; do [ -f "$f" ] && gunzip -c "$f" > "$REPLAST_CACHE/$(basename "$f" .gz)"; done
R="python3 -m replast"
nvidia-smi -L
python3 -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
$R models >/dev/null || exit 1  # the stack imports: fail in seconds, not after the benchmarks

if [ -d "$CARRY/br35h" ]; then  # the benchmarks travel with their images
  timeout 200 $R bench --data "imagefolder:$CARRY/br35h" --weights none $BENCH --out "$OUT/throughput.json"
  timeout 90 python3 benchmarks/reinit_overhead.py --device cuda --steps 20 --out "$OUT/reinit_overhead.json"
fi

# Study parts: one model x dataset cell per training-set size, smallest first; a part cut off by the
# deadline resumes in a later session (finished runs are skipped).
mkdir -p /tmp/paper
for f in docs/results/paper/runs*.tgz; do [ -f "$f" ] && tar xzf "$f" -C /tmp/paper; done
deadline=$((END - 30))  # leave time to collect and pack
[ -n "$CELL" ] || PARTS=""
for fraction in $PARTS; do
  left=$((deadline - SECONDS))
  [ "$left" -gt 20 ] || break
  timeout -s INT "$left" $R sweep --config paper --out /tmp/paper --jobs 8 \
    --only "$CELL train_fraction=$fraction"
done
if [ -n "$CELL" ]; then
  $R sweep --config paper --out /tmp/paper --collect
  cp /tmp/paper/results.csv /tmp/paper/curves.csv "$OUT/" 2>/dev/null
  tar czf "$OUT/paper-runs.tgz" --exclude=checkpoints --exclude='events.out.*' -C /tmp/paper .
fi
ls -la "$OUT"
