#!/usr/bin/env bash
# Every GPU measurement in one go (a few minutes on one H100; installs nothing):
#   1. ViT-B/16 + BERT-base ELA train step in bfloat16 (|V| = 30522, configs/ela_b16.py's objective) at every batch
#      from 256 doubling until a step runs out of memory: pairs/s, achieved FLOP/s and MFU against the card's measured
#      bf16 matmul rate (8192^3 jnp.dot in the same run); the JSON is rewritten after each batch, so the time limit
#      never loses a measurement already made;
#   2. the demo config's step on the same card;
#   3. evaluation encoding (images/s, captions/s) of the B/16 model.
# Writes benchmarks/results/gpu_*.json and prints one table per measurement.
#
# Run from anywhere:  benchmarks/gpu.sh            (PYTHON=/path/to/python to use another interpreter)
#                     benchmarks/gpu.sh --smoke    (CPU, tiny towers, results in a temporary folder: checks the code)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
RESULTS="${RESULTS:-benchmarks/results}"
SMOKE=()
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=(--smoke)
  RESULTS="$(mktemp -d)"
  export JAX_PLATFORMS=cpu
fi
mkdir -p "$RESULTS"
start=$SECONDS
# JAX preallocates 75% of the card by default; the batch search wants nearly all of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

run() {  # run SECONDS NAME SCRIPT ARGS...: one measurement under its own time limit
  local limit=$1 name=$2 script=$3
  shift 3
  if ((${#SMOKE[@]})); then limit=0; fi  # no limit for the CPU check (timeout 0 disables it)
  echo "== $name (limit ${limit}s)"
  # A measurement that fails or runs out of time does not stop the ones after it (each writes its own JSON).
  timeout "$limit" "$PYTHON" "benchmarks/$script" "$@" ${SMOKE[@]+"${SMOKE[@]}"} --output "$RESULTS/gpu_$name.json" ||
    failed+=("$name (exit $?)")
}
failed=()

"$PYTHON" -c "import jax; print('devices:', jax.devices())"
run 240 train_step_b16 train_step.py --config ela_b16 --search_batch --batch_size 256 --steps 3 --repeats 3
run 60 train_step_demo train_step.py --config demo --steps 10 --repeats 3
run 90 eval_encode_b16 eval_encode.py --config ela_b16 --images 2000 --captions 10000 --batch_size 500 --repeats 2
echo "done in $((SECONDS - start)) s; results in $RESULTS"
if ((${#failed[@]})); then
  echo "failed or cut short: ${failed[*]}" >&2
  exit 1
fi
