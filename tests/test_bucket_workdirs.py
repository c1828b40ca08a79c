"""Workdirs on object storage (gs://, against a local GCS emulator): every output is written through the path layer,
one object per record, and reads back as a local workdir's would."""

from __future__ import annotations

import json
import os
import time

import gcsfs
import pytest
from etils import epath

from ela_jax import paths, plots
from ela_jax.training.metrics import RECORDS_FOLDER, MetricWriter, read_metrics
from tests.gcs_emulator import gcs_bucket, gcs_server, private_gcs_bucket  # noqa: F401 - fixtures


def test_records_are_written_read_and_copied_as_objects(gcs_bucket):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    paths.makedirs(run)
    paths.write_json(f"{run}/config.json", {"seed": 3})
    paths.copy(f"{run}/config.json", f"{run}/config.before_step_2.json")
    assert json.loads(paths.read_text(f"{run}/config.before_step_2.json")) == {"seed": 3}
    assert paths.exists(f"{run}/config.json") and not paths.exists(f"{run}/missing.json")
    assert paths.absolute(run) == run
    assert sorted(p.name for p in epath.Path(run).iterdir()) == ["config.before_step_2.json", "config.json"]
    assert not os.path.exists("gs:")  # nothing became a local folder named after the scheme


def write_a_resumed_run(workdir: str) -> None:
    """Logs steps 1-4, is killed, resumes from step 2 (steps 3-4 trained again) and ends with the final evaluation."""
    writer = MetricWriter(workdir, None)
    for step in range(1, 5):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    writer = MetricWriter(workdir, 2)
    for step in range(3, 5):
        writer.write(step, {"loss": 2.0 / step})
    writer.close()
    MetricWriter.final_evaluation(workdir, 4, {"rsum": 5.0})


def without_wall_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "wall_time"} for record in records]


def test_metrics_in_a_bucket_read_back_as_a_local_workdirs(gcs_bucket, tmp_path):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    write_a_resumed_run(run)
    write_a_resumed_run(str(tmp_path))
    remote = without_wall_time(read_metrics(run))
    assert remote == without_wall_time(read_metrics(str(tmp_path)))
    assert [r["step"] for r in remote] == [1, 2, 3, 4] and remote[-1] == {"step": 4, "loss": 0.5, "rsum": 5.0}
    assert len(list(epath.Path(run, RECORDS_FOLDER).iterdir())) == 4  # one object per record, none left over
    events = list(epath.Path(run, "tensorboard").iterdir())
    assert events and all(path.stat().length > 0 for path in events)


def test_training_curves_are_written_into_a_bucket(gcs_bucket):  # noqa: F811
    run = f"{gcs_bucket.url}/run"
    write_a_resumed_run(run)
    output = plots.training_curves(run, f"{run}/plots/training_curves.png")
    assert epath.Path(output).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def gcsfs_tries():
    """Sets gcsfs's tries per request for the test, then puts the count it had back."""
    before = gcsfs.core.GCSFileSystem.retries
    yield paths.limit_bucket_request_tries
    paths.limit_bucket_request_tries(before)


def test_a_read_from_a_stopped_bucket_fails_after_the_bounded_tries(private_gcs_bucket, gcsfs_tries):  # noqa: F811
    record = f"{private_gcs_bucket.url}/run/config.json"
    paths.write_json(record, {"seed": 3})
    private_gcs_bucket.server.stop()
    gcsfs_tries(2)  # one retry, about a second later; gcsfs's own 6 tries take half a minute
    start = time.monotonic()
    with pytest.raises(OSError):
        paths.read_text(record)
    assert time.monotonic() - start < 5
