#!/bin/bash
# The GPU checks, in one go (a machine with an NVIDIA GPU, CUDA torch and nvcc): build the extension with its CUDA
# kernels, run the CUDA tests, benchmark the op on the GPU, and a short train_tiny run on the GPU with the kernel.
# Every step writes its own log in OUT_DIR and runs even when an earlier one failed; the exit status is the tests'.
#
#     bash tools/gpu_check.sh [OUT_DIR]          # default out-gpu/; TORCH_CUDA_ARCH_LIST defaults to the GPU's
set -u
OUT=${1:-out-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} CTPO_EXT_DIR=${CTPO_EXT_DIR:-/tmp/ctpo_ext_gpu}
# the toolkit: $CUDA_HOME, else /usr/local/cuda, else the one around nvcc (torch's own guess can be a bare wrapper's)
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then export CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
fi
step() {  # step NAME SECONDS CMD...: run with a time limit, log to OUT/NAME.log, print one status line
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc in $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$OUT/summary.log"
  tail -n 3 "$OUT/$name.log"
  return $rc
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc; uname -m
  $PY -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -n 2; echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"; } >"$OUT/summary.log" 2>&1
cat "$OUT/summary.log"
step build "${BUILD_S:-180}" $PY -c "import ctpo_ext; m = ctpo_ext.load(verbose=True); print('with_cuda', m.with_cuda()); assert m.with_cuda()"
# two processes: a crash in one (a segfault kills pytest before its summary) does not hide the other's results
step tests "${TESTS_S:-200}" $PY -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/test_cuda.py
tests_rc=$?
step tests_ext "${TESTS_S:-200}" $PY -m pytest -v -rfEs --tb=short -p no:cacheprovider tests/test_ext.py tests/test_ext_policy_loss.py -k "cuda and not nvcc"
tests_rc=$(( tests_rc | $? ))
step bench "${BENCH_S:-100}" $PY bench.py --device cuda --sizes 256x4096 --dtypes float32 --breakdown --repeats 30 --e2e-methods ctpo grpo --e2e-compile-sizes
step bench_large "${BENCH_LARGE_S:-90}" $PY bench.py --device cuda --sizes 16x1024 256x32768 1024x8192 --dtypes float32 bfloat16 --no-compile --breakdown --repeats 30 --e2e-methods ctpo grpo gspo
step train "${TRAIN_S:-60}" $PY train_tiny.py --device=cuda --backend=ext --sft_steps=100 --rl_steps=20 --eval_interval=10 --out_dir=/tmp/ctpo_gpu_train --overwrite=True
exit $tests_rc
