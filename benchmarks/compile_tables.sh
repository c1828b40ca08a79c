#!/usr/bin/env bash
# The ahead-of-time tables: for configs/ela_b16.py and configs/ela_l14.py, mesh presets fsdp and fsdp_tp, slices
# v5e-256, v5p-128 and v6e-256, with and without remat, the largest global batch whose train step fits one chip
# (python -m ela_jax.compile --search_batch) and its roofline step time; then benchmarks/compile_table.py writes the
# table (benchmarks/results/compile/README.md).
#
# One JSON per cell, rewritten after every compile; a cell whose search finished is skipped, so a stopped run
# resumes where it was. Each cell starts from a global batch expected to fit (about half the largest, from the
# cells measured before it): a failing compile near the limit is the slowest kind, and from one fitting size the
# memory line already predicts the largest, so a cell closes in about 3 compiles. The TPU compiler takes most of this
# machine's cores, so cells run one at a time, at low priority.
#
# Run from anywhere:  benchmarks/compile_tables.sh     (CELL_SECONDS=3600 per cell by default; needs `make setup-tpu`)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv-tpu/bin/python}"
CELL_SECONDS="${CELL_SECONDS:-3600}"
OUT=benchmarks/results/compile
# config preset slice remat seed-global-batch
CELLS="
ela_b16 fsdp    v5e-256 True  4096
ela_b16 fsdp    v6e-256 True  28672
ela_b16 fsdp    v5p-128 True  31360
ela_b16 fsdp    v5e-256 False 6656
ela_b16 fsdp    v6e-256 False 13312
ela_b16 fsdp    v5p-128 False 9984
ela_b16 fsdp_tp v5e-256 True  16896
ela_b16 fsdp_tp v6e-256 True  33792
ela_b16 fsdp_tp v5p-128 True  16384
ela_b16 fsdp_tp v5e-256 False 4096
ela_b16 fsdp_tp v6e-256 False 12288
ela_b16 fsdp_tp v5p-128 False 8192
ela_l14 fsdp    v5e-256 True  5120
ela_l14 fsdp    v6e-256 True  11264
ela_l14 fsdp    v5p-128 True  8320
ela_l14 fsdp    v5e-256 False 3072
ela_l14 fsdp    v6e-256 False 3072
ela_l14 fsdp    v5p-128 False 2048
ela_l14 fsdp_tp v5e-256 True  6656
ela_l14 fsdp_tp v6e-256 True  8192
ela_l14 fsdp_tp v5p-128 True  8192
ela_l14 fsdp_tp v5e-256 False 1536
ela_l14 fsdp_tp v6e-256 False 3072
ela_l14 fsdp_tp v5p-128 False 2048
"
while read -r config preset topology remat seed; do
  [ -z "${config}" ] && continue
  name="${config}_${preset}_${topology}_remat${remat}"
  if grep -q '"finished": true' "${OUT}/${name}.json" 2>/dev/null; then
    echo "== ${name}: done"
    continue
  fi
  echo "== ${name} ($(date +%T))"
  PYTHONPATH=. timeout "${CELL_SECONDS}" nice -n 10 "${PYTHON}" -m ela_jax.compile \
    --config "configs/${config}.py:${preset}" --topology "${topology}" --config.model.remat="${remat}" \
    --config.batch_size="${seed}" --search_batch --search_tolerance 0.25 --noeval_encoder \
    --output "${OUT}/${name}.json" 2>&1 | grep -E "global batch|compile error" || true
done <<< "${CELLS}"
.venv/bin/python benchmarks/compile_table.py
