#!/bin/bash
# ELA training on a Cloud TPU pod slice: the same command on every worker VM, one JAX process per VM.
#
#   TPU_NAME=ela-v4-32 ZONE=us-central2-b launch/tpu_pod.sh setup             # copy the committed tree, install
#   TPU_NAME=ela-v4-32 ZONE=us-central2-b launch/tpu_pod.sh train --config configs/demo.py --workdir /mnt/runs/ela
#
# `ela_jax.parallel.initialize_distributed` sees the TPU chips and calls jax.distributed.initialize(), which reads
# the slice's workers from the TPU VM metadata. The workdir and $ELA_JAX_DATA_DIR must be a directory every worker
# sees (NFS / Filestore, or a bucket mounted with gcsfuse): orbax writes one checkpoint from all processes.
# Optional: PROJECT (gcloud project), REPO_DIR (where the repository lives on the workers, default ~/ela_jax).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
REPO_DIR="${REPO_DIR:-~/ela_jax}"
GCLOUD_FLAGS=(--zone "${ZONE}" --worker=all ${PROJECT:+--project "${PROJECT}"})

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${GCLOUD_FLAGS[@]}" --command "$1"
}

case "${1:-}" in
  setup)
    jax_version=$(sed -n 's/^jax==//p' "$(dirname "$0")/../requirements.txt")
    snapshot=$(mktemp -d)  # the committed tree, without .venv, runs or caches
    git -C "$(dirname "$0")/.." archive --prefix=ela_jax/ HEAD | tar -x -C "${snapshot}"
    gcloud compute tpus tpu-vm scp --recurse "${snapshot}/ela_jax" "${TPU_NAME}:${REPO_DIR}" "${GCLOUD_FLAGS[@]}"
    on_all_workers "cd ${REPO_DIR} && python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
      && .venv/bin/pip install -q 'jax[tpu]==${jax_version}'"
    ;;
  train)
    shift
    # Quoted once here so that each argument reaches every worker's shell unchanged.
    on_all_workers "cd ${REPO_DIR} && .venv/bin/python -m ela_jax.train$(printf ' %q' "$@")"
    ;;
  *)
    echo "usage: TPU_NAME=... ZONE=... $0 setup | train --config CONFIG --workdir DIR [--config.KEY=VALUE ...]" >&2
    exit 2
    ;;
esac
