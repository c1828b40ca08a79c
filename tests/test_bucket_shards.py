"""WebDataset shards streamed from a bucket (gs://, against a local GCS emulator): the same samples, batches and skip
counts as from a local folder, a cut tar included."""

from __future__ import annotations

import logging
import os

import fsspec
import numpy as np

from ela_jax.data import pipeline, tokenizer, webdataset
from tests.gcs_emulator import gcs_bucket, gcs_server  # noqa: F401 - fixtures
from tests.helpers import make_tiny_config
from tests.data_fixtures import damaged_shards


def stream(manual_dir: str, workdir: str, caplog) -> tuple[list[dict], str]:
    config = make_tiny_config(
        **{"data.name": "webdataset", "data.manual_dir": manual_dir, "data.max_skip_fraction": 0.6, "batch_size": 4}
    )
    tok = tokenizer.from_config(config.tokenizer, workdir)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        batches = iter(pipeline.train_dataset(config, tok, 0, 1))
        taken = [next(batches) for _ in range(6)]
    summary = next(r.getMessage() for r in caplog.records if " records (" in r.getMessage())
    return taken, summary.split("; first:")[0]  # the first skips are listed in the order the shards were indexed


def test_shards_in_a_bucket_stream_as_a_local_folders_with_cut_tars_counted(gcs_bucket, tmp_path, caplog):  # noqa: F811
    local = str(tmp_path / "shards")
    os.makedirs(local)
    damaged_shards(local)
    remote = f"{gcs_bucket.url}/shards"
    filesystem, root = fsspec.core.url_to_fs(remote)
    filesystem.put(local + "/", root, recursive=True)
    assert webdataset.shard_paths(remote) == [f"{remote}/0000{i}.tar" for i in range(3)]
    expected, local_summary = stream(local, str(tmp_path), caplog)
    actual, remote_summary = stream(remote, str(tmp_path), caplog)
    assert "skipped 20 of 42 records (bad_tar: 16, no_caption: 2, no_image: 1, truncated: 1)" in remote_summary
    assert remote_summary == local_summary
    for before, after in zip(expected, actual):
        assert before.keys() == after.keys()
        for name in before:
            np.testing.assert_array_equal(before[name], after[name])
