#!/usr/bin/env bash
# Every GPU measurement in one go (about 8 minutes on one H100/H200; installs nothing):
#   1. ViT-B/16 + BERT-base ELA train step in bfloat16 (|V| = 30522, configs/ela_b16.py) at batch 256 with each
#      lexicon impl (chunked: before, argmax and pallas: after): pairs/s, model FLOP/s and MFU against the card's
#      measured bf16 matmul rate (8192^3 jnp.dot in the same run) and against its datasheet peak (PEAK_TFLOPS, found
#      from the card's name for H100/H200; empty: not reported);
#   2. the kernel profile (time by model part and by op kind) of the chunked and argmax steps;
#   3. the lexicon head alone (batch 64, 196 patches, |V| = 30522), every impl, time and XLA's planned peak memory;
#   4. with --search: the batch search from 256 (doubling until out of memory), the demo config's step and
#      evaluation encoding (images/s, captions/s) of the B/16 model.
# Writes benchmarks/results/gpu_*.json and prints one table per measurement.
#
# Run from anywhere:  benchmarks/gpu.sh [--search]   (PYTHON=/path/to/python to use another interpreter)
#                     benchmarks/gpu.sh --smoke       (CPU, tiny towers, results in a temporary folder: checks the code)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
RESULTS="${RESULTS:-benchmarks/results}"
SMOKE=()
SEARCH=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=(--smoke) ;;
    --search) SEARCH=1 ;;
    *) echo "unknown argument $arg (use --smoke, --search)" >&2; exit 2 ;;
  esac
done
if ((${#SMOKE[@]})); then
  RESULTS="$(mktemp -d)"
  export JAX_PLATFORMS=cpu
  SMOKE+=(--set model.lexicon.pallas_interpret=True)  # the fused kernel runs compiled on GPU/TPU only
fi
mkdir -p "$RESULTS"
start=$SECONDS
# JAX preallocates 75% of the card by default; the batch search wants nearly all of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
# Dense bf16 datasheet peaks (TFLOP/s, no sparsity) of the cards this has run on; others: set PEAK_TFLOPS.
if [[ -z "${PEAK_TFLOPS:-}" ]] && command -v nvidia-smi >/dev/null; then
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H100*PCIe*) PEAK_TFLOPS=756 ;;
    *H100*NVL*) PEAK_TFLOPS=835 ;;
    *H100* | *H200*) PEAK_TFLOPS=989 ;;
    *A100*) PEAK_TFLOPS=312 ;;
  esac
fi
PEAK_TFLOPS="${PEAK_TFLOPS:-0}"

run() {  # run SECONDS NAME SCRIPT ARGS...: one measurement under its own time limit
  local limit=$1 name=$2 script=$3
  shift 3
  if ((${#SMOKE[@]})); then limit=0; fi  # no limit for the CPU check (timeout 0 disables it)
  echo "== $name (limit ${limit}s)"
  # A measurement that fails or runs out of time does not stop the ones after it (each writes its own JSON).
  timeout "$limit" "$PYTHON" "benchmarks/$script" "$@" --output "$RESULTS/gpu_$name.json" || failed+=("$name (exit $?)")
}
failed=()

"$PYTHON" -c "import jax; print('devices:', jax.devices())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv 2>/dev/null || true
for impl in chunked argmax pallas; do
  run 150 "train_step_b16_$impl" train_step.py --config ela_b16 --batch_size 256 --steps 3 --repeats 3 \
    --peak_tflops "$PEAK_TFLOPS" --set "model.lexicon.impl=$impl" ${SMOKE[@]+"${SMOKE[@]}"}
done
for impl in chunked argmax; do
  run 100 "profile_ops_b16_$impl" profile_ops.py --config ela_b16 --steps 3 --set "model.lexicon.impl=$impl" \
    ${SMOKE[@]+"${SMOKE[@]}"}
done
if ((${#SMOKE[@]})); then
  run 0 lexicon_head lexicon_head.py --batch 2 --patches 4 --vocab 300 --width 16 --settings chunked:128,argmax:128,dense:0 \
    --untimed "" --repeats 1
else
  run 90 lexicon_head lexicon_head.py --settings chunked:2048,argmax:2048,pallas:0,dense:0 --untimed "" --repeats 5
fi
if ((SEARCH)); then
  run 240 train_step_b16 train_step.py --config ela_b16 --search_batch --batch_size 256 --steps 3 --repeats 3 \
    --peak_tflops "$PEAK_TFLOPS" ${SMOKE[@]+"${SMOKE[@]}"}
  run 60 train_step_demo train_step.py --config demo --steps 10 --repeats 3 ${SMOKE[@]+"${SMOKE[@]}"}
  run 90 eval_encode_b16 eval_encode.py --config ela_b16 --images 2000 --captions 10000 --batch_size 500 --repeats 2 \
    ${SMOKE[@]+"${SMOKE[0]}"}
fi
echo "done in $((SECONDS - start)) s; results in $RESULTS"
if ((${#failed[@]})); then
  echo "failed or cut short: ${failed[*]}" >&2
  exit 1
fi
