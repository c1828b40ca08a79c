#!/usr/bin/env bash
# The ahead-of-time tables: for configs/ela_b16.py and configs/ela_l14.py, mesh presets fsdp and fsdp_tp, slices
# v5e-256, v5p-128 and v6e-256, with and without remat, the largest global batch whose train step fits one chip
# (python -m ela_jax.compile --search_batch) and its roofline step time. One JSON per cell in
# benchmarks/results/compile/, rewritten after every compile, so a cell stopped by its time limit keeps what it found.
# Cells run smallest-first; each is CPU-heavy (the TPU compiler runs here), so they run one at a time under nice.
#
# Run from anywhere:  benchmarks/compile_tables.sh     (CELL_SECONDS=1800 per cell by default; needs `make setup-tpu`)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv-tpu/bin/python}"
CELL_SECONDS="${CELL_SECONDS:-1800}"
OUT=benchmarks/results/compile
for config in ela_b16 ela_l14; do
  for topology in v5e-256 v5p-128 v6e-256; do
    for preset in fsdp fsdp_tp; do
      for remat in True False; do
        name="${config}_${preset}_${topology}_remat${remat}"
        echo "== ${name}"
        PYTHONPATH=. timeout "${CELL_SECONDS}" nice -n 10 "${PYTHON}" -m ela_jax.compile \
          --config "configs/${config}.py:${preset}" --topology "${topology}" --config.model.remat="${remat}" \
          --search_batch --search_tolerance 0.125 --noeval_encoder --output "${OUT}/${name}.json" \
          2>&1 | grep -E "global batch|compile error" || true
      done
    done
  done
done
