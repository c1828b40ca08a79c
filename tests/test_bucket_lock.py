"""One run per workdir on object storage: a lock object created only if absent, refreshed by a heartbeat, taken over
once stale (against a local GCS emulator)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import pytest

from ela_jax import paths
from ela_jax.training import loop
from ela_jax.training.workdir_lock import ObjectLock, WorkdirBusy, WorkdirLock, workdir_lock
from tests.gcs_emulator import gcs_bucket, gcs_server  # noqa: F401 - fixtures
from tests.helpers import make_tiny_config


def test_a_bucket_workdir_gets_the_object_lock_and_a_disk_keeps_flock(gcs_bucket, tmp_path):  # noqa: F811
    assert isinstance(workdir_lock(f"{gcs_bucket.url}/run", "train.lock", 600), ObjectLock)
    assert isinstance(workdir_lock(str(tmp_path), "train.lock", 600), WorkdirLock)


def test_a_second_holder_is_refused_in_one_line_until_the_first_releases(gcs_bucket):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    with ObjectLock(run, "train.lock", stale_after=600):
        second = ObjectLock(run, "train.lock", stale_after=600)
        with pytest.raises(WorkdirBusy) as refused:
            second.__enter__()
        message = str(refused.value)
        assert "\n" not in message and f"{run} is in use by pid {os.getpid()} on {socket.gethostname()}" in message
    assert not paths.exists(f"{run}/train.lock")  # released: the object is gone
    with ObjectLock(run, "train.lock", stale_after=600):
        pass


def test_the_heartbeat_keeps_a_live_lock_fresh(gcs_bucket):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    # Beats every 0.5 s; a stale limit of 2 s leaves room for requests slowed by a loaded machine.
    with ObjectLock(run, "train.lock", stale_after=2.0) as lock:
        first = json.loads(paths.read_text(lock.path))["heartbeat"]
        time.sleep(2.5)
        assert json.loads(paths.read_text(lock.path))["heartbeat"] > first
        assert not ObjectLock(run, "train.lock", stale_after=2.0).acquire()  # refreshed, so never stale


def test_a_stale_lock_is_taken_over_with_one_line(gcs_bucket, caplog):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    dead = {"host": "gone", "pid": 1, "started": "earlier", "command": "train", "token": "x", "heartbeat": 0.0}
    paths.write_text(f"{run}/train.lock", json.dumps(dead))
    fresh = dict(dead, heartbeat=time.time())
    with caplog.at_level(logging.WARNING):
        with ObjectLock(run, "train.lock", stale_after=60) as lock:
            assert json.loads(paths.read_text(lock.path))["pid"] == os.getpid()
    [line] = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
    assert "pid 1 on gone" in line
    paths.write_text(f"{run}/train.lock", json.dumps(fresh))  # a live holder's lock is not stale
    assert not ObjectLock(run, "train.lock", stale_after=60).acquire()


@pytest.mark.integration
def test_training_on_a_held_bucket_workdir_stops_at_once_naming_the_holder(gcs_bucket):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    with ObjectLock(run, loop.RUN_LOCK_FILE, stale_after=600):
        with pytest.raises(WorkdirBusy, match=rf"in use by pid {os.getpid()} on {socket.gethostname()} since"):
            loop.train(make_tiny_config(), run)
    assert not paths.exists(f"{run}/config.json")  # nothing of the holder's was touched
