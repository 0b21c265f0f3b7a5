#!/usr/bin/env bash
# What only a GPU can show, in one go: the `gpu` test marker and the throughput
# benchmark for digits (one image a job, and 256-frame stacks) and for the
# all-MiniLM-L6-v2 architecture (random weights: the shipped ones are not
# carried to a machine without a package index). Everything it prints lands
# in one folder, a file a check, with a summary.txt of the figures.
#
#   bash bench/gpu_checks.sh [folder]     # default: $OUT, else /tmp/gpuq-gpu-checks
#
# On a GPU machine without a package index, first gather the wheels here
# (../shared/tools/device-wheels.sh jsonschema jsonschema-rs jsonschema-specifications
# referencing rpds-py attrs pillow safetensors nvidia-ml-py orjson) and carry .whl/:
# this script installs them as that script's header says. GPUQ_CHECK_DEVICE=cpu
# runs the same steps on a CPU, to try the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpuq-gpu-checks}}
device=${GPUQ_CHECK_DEVICE:-cuda}
seconds=${GPUQ_CHECK_SECONDS:-9}
mkdir -p "$out"
export PYTHONPATH=$PWD
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PWD:/tmp/site
fi
python=${GPUQ_CHECK_PYTHON:-python3}
summary="$out/summary.txt"
: > "$summary"
note() { printf '%s\n' "$*" | tee -a "$summary"; }

note "device: $device; $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"

if [ "$device" = cuda ]; then
  timeout 300 "$python" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_gpu_inference.py \
    tests/test_gpu_embed.py tests/test_telemetry.py > "$out/pytest-gpu.txt" 2>&1
  note "pytest -m gpu: exit $? ($(tail -n 1 "$out/pytest-gpu.txt"))"
fi

run_bench() {  # name, then throughput.py's arguments
  local name=$1; shift
  timeout 420 "$python" bench/throughput.py --device "$device" --seconds "$seconds" --rounds 3 \
    --skip-overhead --skip-drain --json "$out/$name.json" "$@" > "$out/$name.txt" 2>&1
  local code=$?
  note "$name: exit $code"
  grep -E '^\((a|b|c)\) |^b/a|^b/c|\] end-to-end|\] batching' "$out/$name.txt" | tee -a "$summary"
}

run_bench digits-single --analyzer digits --job-kind single --clients 64
run_bench digits-coarse --analyzer digits --job-kind coarse --clients 32
GPUQ_EMBED_RANDOM_WEIGHTS=1 run_bench embed-single --analyzer embed --job-kind single --clients 64
note "files in $out"
