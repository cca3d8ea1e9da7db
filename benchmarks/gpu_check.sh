#!/usr/bin/env bash
# The training path on a machine with NVIDIA GPUs and a CUDA build of PyTorch, in one run:
#   1. the CUDA-marked training tests (pytest -m torch_cuda), when pytest is installed;
#   2. study (a) of benchmarks/study_fashion_mnist.py for a few epochs on cuda with --amp bf16;
#   3. se-onnx train under torchrun on every GPU the machine has, then in one process, compared;
#   4. images/s of the training step on the GPU (off, bf16) and on the CPU, and of the loader.
#
#   benchmarks/gpu_check.sh [FASHION_MNIST_DIR]      # default /usr/share/datasets/fashion-mnist
#
# It needs only PyTorch (CUDA), onnx, onnx-ir, onnxruntime (the CPU build is enough: evaluate runs
# there) and numpy: the project runs from this checkout on PYTHONPATH, nothing is installed or
# downloaded. A machine without the data can take the four IDX files (30 MB) along in a folder
# (e.g. `.gpu-data/`, which git ignores) and be given it as FASHION_MNIST_DIR.
# PYTHON picks the interpreter (default python3). DEVICE=cpu runs the same steps on the CPU (two
# gloo processes, no autocast), to check the script itself where no GPU is at hand. Exits non-zero
# if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
DATA=${1:-/usr/share/datasets/fashion-mnist}
DEVICE=${DEVICE:-cuda}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "machine"
"$PYTHON" - <<'EOF'
import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")
for index in range(torch.cuda.device_count()):
    print(f"  cuda:{index}: {torch.cuda.get_device_name(index)}")
EOF
if [ "$DEVICE" = cuda ]; then
    GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
    [ "$GPUS" -gt 0 ] || { echo "gpu_check: this PyTorch sees no GPU (DEVICE=cpu checks the script on the CPU)"; exit 1; }
    AMP=bf16
else
    GPUS=2 AMP=off
fi

step "1. CUDA-marked training tests"
if "$PYTHON" -c 'import pytest' 2>/dev/null; then
    "$PYTHON" -m pytest -q -p no:cacheprovider -m torch_cuda tests/test_train_run.py
else
    echo "pytest is not installed here: skipped"
fi

step "2. study (a) and (b), 1 seed, 3 epochs, on $DEVICE with --amp $AMP"
if [ "$DEVICE" = cuda ]; then SUBSETS=(--train-subset 0 --val-subset 0); else SUBSETS=(--train-subset 1000 --val-subset 500); fi
"$PYTHON" benchmarks/study_fashion_mnist.py --data "$DATA" --work "$WORK/study" --seeds 1 --epochs 3 \
    --finetune-epochs 1 "${SUBSETS[@]}" --device "$DEVICE" --amp "$AMP" --workers 4 --runs 20

BASE=$(find "$WORK/study" -name init_base.onnx | head -n 1)
TRAIN="$WORK/study/train.npz"
COMMON=(--data "$TRAIN" --train all --bn frozen --epochs 1 --optimizer sgd --lr 0.05 --no-progress --seed 0 --json)

step "3. torchrun, $GPUS processes on $DEVICE, against one process (global batch $((64 * GPUS)))"
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m se_onnx train "$BASE" \
    -o "$WORK/ddp.onnx" --device "$DEVICE" --batch-size 64 "${COMMON[@]}" >"$WORK/ddp.json"
"$PYTHON" -m se_onnx train "$BASE" -o "$WORK/single.onnx" --device "$DEVICE" --batch-size $((64 * GPUS)) "${COMMON[@]}" \
    >"$WORK/single.json"
"$PYTHON" - "$WORK" <<'EOF'
import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper

work = sys.argv[1]
weights = [
    {t.name: numpy_helper.to_array(t) for t in onnx.load(f"{work}/{name}.onnx").graph.initializer}
    for name in ("ddp", "single")
]
worst = max(float(np.abs(weights[0][n] - weights[1][n]).max()) for n in weights[0])
for name in ("ddp", "single"):
    report = json.load(open(f"{work}/{name}.json"))
    last = report["epochs"][-1]
    print(f"{name}: {report['processes']} process(es) on {report['device']}: {last['seconds']:.1f} s, "
          f"train loss {last['train_loss']:.4f}")
print(f"largest weight difference, torchrun against one process: {worst:.2e} (the all-reduce sums in another order)")
EOF

step "4. images/s: training step on GPU and CPU, and the loader"
SETTINGS=("--device cpu --amp off")
[ "$DEVICE" = cuda ] && SETTINGS=("--device cuda --amp off" "--device cuda --amp bf16" "${SETTINGS[@]}")
for setting in "${SETTINGS[@]}"; do
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/bench_train_throughput.py --model "$BASE" --data "$TRAIN" --workers 4 $setting
done
