"""Training with its workdir in a bucket (gs://, against a local GCS emulator): the run writes every promised output
there, resumes bit-identically from its checkpoints, falls back past a damaged one, and an outage ends it in one line
rather than a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from ela_jax import paths, train_errors
from ela_jax.data import pipeline, world_tfds
from ela_jax.experiment import Experiment, load_config
from ela_jax.training import loop
from ela_jax.training.checkpoint import Checkpointer, CheckpointError
from ela_jax.training.metrics import read_metrics
from tests.gcs_emulator import gcs_bucket, gcs_server, private_gcs_bucket  # noqa: F401 - fixtures
from tests.helpers import RESUME_EVERY, RESUME_STEPS, make_tiny_config, resume_config, write_tiny_config_file

pytestmark = pytest.mark.integration  # trains

STEPS = RESUME_STEPS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The training CLI's config for the two-process job: the shared tiny model, a checkpoint every step (so a kill lands
# in a save) and a lock that goes stale after 12 s (so the restarted job may take over the killed job's lock).
JOB_OVERRIDES = {"log.every_steps": 1, "checkpoint.every_steps": 1, "train.stale_lock_minutes": 0.2}


def bucket_config(**overrides):
    return resume_config(**overrides)  # test_preemption's: a session compiles its train step once for both


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("local_run"))
    return workdir, loop.train(bucket_config(), workdir)


def assert_same_run(workdir: str, reference: str) -> None:
    expected, actual = read_metrics(reference), read_metrics(workdir)
    assert [r["step"] for r in actual] == list(range(1, STEPS + 1))
    for before, after in zip(expected, actual):
        assert (before["loss"], before["grad_norm"]) == (after["loss"], after["grad_norm"]), before["step"]
    assert json.loads(paths.read_text(f"{workdir}/eval/results.json")) == json.loads(
        paths.read_text(f"{reference}/eval/results.json")
    )


def test_a_preempted_run_in_a_bucket_resumes_as_a_local_run_goes(local_run, gcs_bucket):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    with pytest.MonkeyPatch.context() as patch:  # not `monkeypatch`: undoing it would unroute the clients
        patch.setattr(loop.PreemptionWatch, "should_stop", lambda self, step: step == 6)
        assert loop.train(bucket_config(), run) == {"preempted_at_step": 6}
    loop.train(bucket_config(), run)
    assert_same_run(run, local_run[0])
    for name in (
        "config.json",
        "sharding.json",
        "world_vocab.txt",
        "plots/training_curves.png",
        f"checkpoints/{STEPS}",
    ):
        assert epath.Path(run, name).exists(), name
    assert any(path.name.startswith("events.out.tfevents") for path in epath.Path(run, "tensorboard").iterdir())
    assert not paths.exists(f"{run}/train.lock")  # released at the end of each run
    assert not os.path.exists("gs:")


def test_a_damaged_newest_checkpoint_in_a_bucket_falls_back_and_is_set_aside(local_run, gcs_bucket, caplog):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    filesystem, root = fsspec.core.url_to_fs(run)
    filesystem.put(local_run[0] + "/", root, recursive=True)
    epath.Path(run, "checkpoints", str(STEPS), "state", "_METADATA").unlink()
    experiment = Experiment.build(load_config(run), run)
    data_iterator = iter(pipeline.train_dataset(experiment.config, experiment.tokenizer, 0, 1))
    checkpointer = experiment.checkpointer()
    state, step = checkpointer.restore_newest(experiment.state_factory().abstract_with_shardings(), data_iterator)
    checkpointer.close()
    assert step == int(state.step) == STEPS - RESUME_EVERY
    skipped = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(skipped) == 1 and f"checkpoint step {STEPS} in {run}/checkpoints does not restore (" in skipped[0]
    assert sorted(p.name for p in epath.Path(run, "checkpoints").iterdir()) == [
        str(STEPS - 2 * RESUME_EVERY),
        str(step),
    ]
    assert epath.Path(run, "checkpoints_damaged", str(STEPS), "data").is_dir()  # kept for inspection


def test_evaluating_a_run_in_a_bucket_writes_its_own_record_and_scores_as_training_did(local_run, gcs_bucket, tmp_path):  # noqa: F811
    """`python -m ela_jax.evaluate --workdir gs://...` reads the run's config and newest checkpoint from the bucket,
    scores them as training's final evaluation did, and writes its own file beside the run's record, which it leaves
    as training wrote it; nothing lands on the local disk."""
    run = f"{gcs_bucket.url}/run"
    filesystem, root = fsspec.core.url_to_fs(run)
    filesystem.put(local_run[0] + "/", root, recursive=True)
    record = paths.read_text(f"{run}/eval/results.json")
    command = [sys.executable, "-m", "ela_jax.evaluate", "--workdir", run]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {run}/eval/results_step{STEPS}.json" in result.stdout
    assert paths.read_text(f"{run}/eval/results.json") == record
    written = json.loads(paths.read_text(f"{run}/eval/results_step{STEPS}.json"))
    assert written["scores"] == json.loads(record)["scores"] and written["step"] == STEPS
    assert (written["workdir"], written["overrides"]) == (run, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # compiles and trains a run first (about 40 s); the twin below checks the save alone
def test_an_outage_mid_run_ends_it_in_one_line_within_seconds(private_gcs_bucket, monkeypatch):  # noqa: F811
    """The store goes away as step 4's checkpoint is saved: the run stops with one line naming the workdir within
    seconds (every client's retries are bounded) instead of a wait of minutes."""
    run = f"{private_gcs_bucket.url}/run"
    save = loop.Checkpointer.save
    stopped_at = []

    def save_after_the_store_went_away(self, step, *args, **kwargs):
        if step == RESUME_EVERY:
            private_gcs_bucket.server.stop()
            stopped_at.append(time.monotonic())
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(loop.Checkpointer, "save", save_after_the_store_went_away)
    with pytest.raises(SystemExit) as stopped:
        train_errors.train_or_exit(bucket_config(), run)
    elapsed = time.monotonic() - stopped_at[0]
    message = str(stopped.value)
    assert "\n" not in message and run in message and message.split(":")[0] in ("checkpoint error", "storage error")
    print(f"outage reported {elapsed:.1f} s after the store stopped")
    assert elapsed < 30  # each request that fails waits 1 + 2 s plus up to 2 s of jitter; before the bound, 100 s


def test_a_save_into_an_unreachable_bucket_fails_in_one_line_within_seconds(private_gcs_bucket):  # noqa: F811
    paths.limit_bucket_request_tries(bucket_config().train.bucket_request_tries)  # as a run's Experiment.build does
    checkpointer = Checkpointer(f"{private_gcs_bucket.url}/checkpoints", keep=2)
    state = {"w": jnp.arange(8.0)}
    checkpointer.save(1, state)
    checkpointer.manager.wait_until_finished()
    private_gcs_bucket.server.stop()
    start = time.monotonic()
    with pytest.raises(CheckpointError) as failed:
        checkpointer.save(2, state)
        checkpointer.close()
    elapsed = time.monotonic() - start
    assert "\n" not in str(failed.value) and f"under {private_gcs_bucket.url}/checkpoints failed:" in str(failed.value)
    print(f"save failure reported in {elapsed:.1f} s")
    assert elapsed < 15


# Three two-process jobs (about two minutes): the only test of a multi-host job preempted with its workdir in a bucket.
def test_a_two_process_job_killed_mid_save_in_a_bucket_resumes_as_the_uninterrupted_job_goes(gcs_bucket, tmp_path):  # noqa: F811
    """Both processes write one checkpoint per step into the bucket; the whole job is SIGKILLed while saves are in
    flight. Restarted with the same command, it takes over the dead job's lock once stale, resumes from the newest
    committed step and ends with the uninterrupted job's losses and evaluation, bit for bit."""
    config_path = tmp_path / "job.py"
    write_tiny_config_file(config_path, JOB_OVERRIDES)
    world_tfds.world_builder(make_tiny_config(**JOB_OVERRIDES).data)  # written once, before two processes read it
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    uninterrupted, killed = f"{gcs_bucket.url}/uninterrupted", f"{gcs_bucket.url}/killed"

    def job(workdir: str) -> list[str]:
        train = [sys.executable, "-m", "ela_jax.train", "--config", str(config_path), "--workdir", workdir]
        return [sys.executable, "-m", "launch.local", "--processes", "2", "--", *train]

    finished = subprocess.run(job(uninterrupted), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-2000:]

    process = subprocess.Popen(job(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not committed_steps(f"{killed}/checkpoints") and process.poll() is None:
        time.sleep(0.2)
    time.sleep(float(np.random.default_rng(0).uniform(0.0, 1.0)))
    for pid in [*child_pids(process.pid), process.pid]:  # the workers, then the launcher: as a lost VM would
        os.kill(pid, signal.SIGKILL)
    process.wait()
    newest = max(committed_steps(f"{killed}/checkpoints"))
    assert 0 < newest < 20 and paths.exists(f"{killed}/train.lock")  # killed mid-run, its lock left behind
    time.sleep(JOB_OVERRIDES["train.stale_lock_minutes"] * 60 + 1)  # the dead job's heartbeat is now stale

    resumed = subprocess.run(job(killed), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    assert "taking over the stale lock" in resumed.stdout + resumed.stderr, resumed.stdout[:3000]
    expected, actual = read_metrics(uninterrupted), read_metrics(killed)
    assert [r["step"] for r in actual] == list(range(1, 21))
    assert [(r["loss"], r["grad_norm"]) for r in actual] == [(r["loss"], r["grad_norm"]) for r in expected]
    assert (
        json.loads(paths.read_text(f"{killed}/eval/results.json"))["scores"]
        == json.loads(paths.read_text(f"{uninterrupted}/eval/results.json"))["scores"]
    )


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (launch.local puts each worker in its own session, so no process group holds them
    all)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def committed_steps(checkpoints: str) -> list[int]:
    """Steps orbax has committed in a bucket (a step still being written has no commit_success.txt yet)."""
    if not paths.exists(checkpoints):
        return []
    return sorted(
        int(path.name)
        for path in epath.Path(checkpoints).iterdir()
        if path.name.isdigit() and (path / "commit_success.txt").exists()
    )
