#!/usr/bin/env bash
# The GPU checks of the CUDA kernels in one call (~6 minutes on an H100/H200, at most 9): build
# with CUDA, the CUDA tests (not the nvcc compile check: the build compiles the .cu), the kernel
# benchmarks, the per-step hook benchmark. Every stage has a time limit and the script goes on
# past a failure; logs and JSON land in $OUT (default ./gpu_out); a summary
# ends the output. Run from the repository root: bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
declare -a SUMMARY

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, record the outcome
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  tail -n 15 "$OUT/$name.log"
  SUMMARY+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - start))" \
    "$( ((rc == 124 || rc == 137)) && echo TIMEOUT || { ((rc == 0)) && echo ok || echo FAILED; })")")
}

stage env 20 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'"
# The system compiler: the lent GPU machine sets CXX to a wrapper (/opt/gcc/bin/g++) whose library
# crashes when an op raises (setup.py now refuses such a build).
stage build 90 env CXX="${THREEPC_CXX:-g++}" CC="${THREEPC_CC:-gcc}" "$PY" setup.py build_ext --inplace
stage backend 20 "$PY" -c "from compressors import kernels; print(kernels.backend_info())"
stage test_cuda 300 "$PY" -m pytest tests/test_cuda.py -q -rf --tb=short --durations=5 -p no:cacheprovider -k "not compiles"
stage bench_cuda 60 "$PY" -m pytest benchmarks/test_cuda_speed.py -q -p no:cacheprovider \
  --benchmark-json "$OUT/cuda_speed.json"
stage hook_step 60 "$PY" -m benchmarks.hook_step_gpu --out "$OUT/hook_step.json"

echo "== summary (logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}"  # not a file: the device tool returns at most 8 files from $OUT
