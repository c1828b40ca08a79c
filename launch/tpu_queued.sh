#!/bin/bash
# ELA training on a spot (preemptible) Cloud TPU slice that restarts itself: requests the slice as a queued resource,
# waits until it is ACTIVE, installs (launch/tpu_pod.sh setup) and runs the same training command in the foreground;
# when the slice is preempted or the run stops early, it deletes the slice, requests it again and reruns the command,
# which resumes from the newest checkpoint in the workdir, until the run completes (total_steps reached, status 0).
# Run it from a machine that outlives the slice (Cloud Shell, a small VM), with the workdir in a bucket:
#
#   export TPU_NAME=ela-v5e-32 ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-32 RUNTIME_VERSION=v2-alpha-tpuv5-lite
#   launch/tpu_queued.sh --config configs/ela_b16.py --workdir gs://my-bucket/runs/ela_b16 \
#     --config.data.name=webdataset --config.data.manual_dir=gs://my-bucket/shards
#
# Optional: PROJECT, MAX_ATTEMPTS (default 100), POLL_SECONDS (default 60), and tpu_pod.sh's REPO_DIR and forwarded
# variables. Not run on a real slice here: tests/test_launch.py drives it against a gcloud stand-in.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
: "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v5litepod-32}"
: "${RUNTIME_VERSION:?set RUNTIME_VERSION, e.g. v2-alpha-tpuv5-lite}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QUEUED=(gcloud compute tpus queued-resources)
WHERE=(--zone "${ZONE}" ${PROJECT:+--project "${PROJECT}"})
# The trainer's status after a preemption checkpoint (see launch/slurm.sbatch): not a finished run.
export ELA_JAX_EXIT_CODE_WHEN_PREEMPTED=75

slice_state() {
  "${QUEUED[@]}" describe "${TPU_NAME}" "${WHERE[@]}" --format='value(state.state)' 2>/dev/null || echo MISSING
}

request_slice() {
  "${QUEUED[@]}" create "${TPU_NAME}" --node-id "${TPU_NAME}" --accelerator-type "${ACCELERATOR_TYPE}" \
    --runtime-version "${RUNTIME_VERSION}" --spot "${WHERE[@]}"
}

release_slice() {
  "${QUEUED[@]}" delete "${TPU_NAME}" --force --quiet "${WHERE[@]}" || true
}

wait_until_active() {
  local state
  while state=$(slice_state) && [[ "${state}" != ACTIVE ]]; do
    case "${state}" in
      MISSING) request_slice ;;
      FAILED | SUSPENDED) release_slice; request_slice ;;
    esac
    sleep "${POLL_SECONDS:-60}"
  done
}

for attempt in $(seq 1 "${MAX_ATTEMPTS:-100}"); do
  wait_until_active
  status=0
  "${HERE}/tpu_pod.sh" setup && "${HERE}/tpu_pod.sh" run "$@" || status=$?
  if [[ "${status}" -eq 0 ]]; then
    echo "attempt ${attempt}: the run completed"
    exit 0
  fi
  echo "attempt ${attempt} ended with status ${status}: requesting ${TPU_NAME} again; the run resumes from its workdir"
  release_slice
done
echo "gave up after ${MAX_ATTEMPTS:-100} attempts" >&2
exit 1
