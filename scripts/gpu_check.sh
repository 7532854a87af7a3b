#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the one-call GPU benchmark (every target of the GPU
# work, judged), then the test-suite on CUDA (torch-cuda and CuPy join the backend matrix
# automatically; the Triton kernels compile for the card instead of running interpreted).
#
# Usage: scripts/gpu_check.sh [OUTPUT_DIR]     (pcrsolve installed with its test extras)
# Writes OUTPUT_DIR/gpu.json, OUTPUT_DIR/gpu-bench.log and OUTPUT_DIR/gpu-tests.log.
set -u -o pipefail
out=${1:-.}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -m pcrsolve bench gpu --json "$out/gpu.json" 2>&1 | tee "$out/gpu-bench.log"
bench=$?
python -m pytest -q -p no:cacheprovider -x tests 2>&1 | tee "$out/gpu-tests.log"
tests=$?
echo "gpu_check: bench exit $bench, tests exit $tests"
exit $(( bench != 0 || tests != 0 ))
