#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (see /work/.library/device/README.md): the CUDA
# tests, the sync profile, the ResNet-18 speed check and the CLI end to end on CUDA, each stage
# with its own time limit so that a slow stage cannot starve the rest. Results go to $OUT (the
# device tool's folder) or bench/out/device. Fashion-MNIST runs only when its files are in .fm/.
#
#     bash bench/device_check.sh [BUDGET_SECONDS]
set -u
BUDGET=${1:-480}
DEST=${OUT:-bench/out/device}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MIXUNLEARN_HOME=$(mktemp -d)
PY=${PYTHON:-python3}
left() { echo $((BUDGET - SECONDS)); }
stage() {  # stage NAME LIMIT CMD...: run CMD with min(LIMIT, time left), log to $DEST/NAME.log
    local name=$1 limit=$2; shift 2
    local t=$(left); [ "$t" -lt "$limit" ] && limit=$t
    if [ "$limit" -le 5 ]; then echo "== $name: skipped (budget spent)"; return; fi
    echo "== $name (limit ${limit}s, ${SECONDS}s elapsed)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$DEST/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$DEST/$name.log"
    echo "== $name: rc=$rc, $((SECONDS - t0)) s"
}

{ nvidia-smi -L; $PY -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1
stage speed 120 $PY bench/gpu_speed.py --device cuda --steps 200 --warmup 20 --out "$DEST/gpu_speed.json"
stage speed_fp32 60 $PY bench/gpu_speed.py --device cuda --steps 200 --warmup 20 --no-amp --out "$DEST/gpu_speed_fp32.json"
stage tests 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_data.py tests/test_registry.py -k cuda
stage syncs 60 $PY bench/gpu_syncs.py --out "$DEST/gpu_syncs.json"
stage cli_digits 60 $PY -m mixunlearn run --dataset digits --forget class:3 --methods retrain,mixunlearn,mixunlearn_agnostic --seed 1 --device cuda --quiet --out "$(mktemp -d)"
ALL=finetune,neggrad,neggrad_plus,random_label,boundary_shrink,boundary_expanding,l1_sparse,salun,ssd,unsir,scrub,bad_teacher,laf,laf_r,randlabel,l_mix,mixunlearn,mixunlearn_agnostic
# Issue 12: the CIFAR-shaped ResNet-18 fast recipe's training steps/s (timed probe, batch 256), and
# (below, with the data) the Fashion-MNIST fast recipe's original + Retrain (target <= 20 s on one GPU).
stage resnet_fast 60 $PY -c "from mixunlearn.estimate import probe_train_step as p; from mixunlearn.training import RECIPES as R; s = p('resnet18', 'cifar10', R['cifar_fast'], 'cuda', steps=30, min_seconds=2); print(f'resnet18 cifar_fast: {1/s:.1f} steps/s, {s*R[\"cifar_fast\"].steps(50000):.0f} s per training')"
if [ -d .fm ]; then
    stage fashion_fast 120 $PY -m mixunlearn run --dataset fashion_mnist --data-root .fm --no-download --forget class:0 --methods retrain --seed 0 --device cuda --quiet --out "$(mktemp -d)"
    stage cli_fashion 240 $PY -m mixunlearn run --dataset fashion_mnist --data-root .fm --no-download --forget class:0 --methods retrain,mixunlearn,mixunlearn_agnostic --seed 0 --device cuda --quiet --out "$(mktemp -d)"
fi
stage cli_all 120 $PY -m mixunlearn run --dataset digits --forget class:0 --methods $ALL --seed 0 --device cuda --quiet --out "$(mktemp -d)"
echo "== total ${SECONDS}s"
