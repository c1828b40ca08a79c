"""Image-text folders (and COCO's Karpathy layout) read from a bucket (gs://, against a local GCS emulator): the prepared splits, the skip counts
and the training stream, resumed included, are those of the same folder on a local disk."""

from __future__ import annotations

import logging

import fsspec
import numpy as np

from ela_jax.data import captions_tfds, pipeline, sources, tokenizer
from tests import data_fixtures as fixtures
from tests.gcs_emulator import gcs_bucket, gcs_server  # noqa: F401 - fixtures
from tests.helpers import make_tiny_config


def source_config(manual_dir: str, data_dir: str, name: str = "folder"):
    overrides = {"data.name": name, "data.manual_dir": manual_dir, "data.dir": data_dir, "batch_size": 4}
    return make_tiny_config(**{**overrides, "data.max_skip_fraction": 0.6})


def prepared_splits(config, caplog) -> tuple[dict[str, list[dict]], list[str]]:
    """Every record of each split, and the skip warnings logged while the folder was prepared."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        builder = captions_tfds.captions_builder(config.data.name, config.data, config.data.manual_dir)
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    splits = {}
    for split in ("train", "test"):
        source = builder.as_data_source(split=split)
        splits[split] = [source[i] for i in range(len(source))]
    return splits, warnings


def batches(config, workdir: str, count: int, state: dict | None = None) -> tuple[list[dict], dict]:
    stream = iter(pipeline.train_dataset(config, tokenizer.from_config(config.tokenizer, workdir), 0, 1))
    if state is not None:
        stream.set_state(state)
    taken = [next(stream) for _ in range(count)]
    return taken, stream.get_state()


def assert_same_batches(expected: list[dict], actual: list[dict]) -> None:
    assert len(expected) == len(actual)
    for before, after in zip(expected, actual):
        assert before.keys() == after.keys()
        for name in before:
            np.testing.assert_array_equal(before[name], after[name])


def uploaded(local: str, remote: str) -> str:
    """`remote`, holding a copy of the local folder's tree."""
    filesystem, root = fsspec.core.url_to_fs(remote)
    filesystem.put(local + "/", root, recursive=True)
    return remote


def test_a_folder_in_a_bucket_prepares_and_streams_as_the_same_local_folder(gcs_bucket, tmp_path, caplog):  # noqa: F811
    local = str(tmp_path / "folder")
    fixtures.damaged_caption_folder(local)
    remote = uploaded(local, f"{gcs_bucket.url}/folder")
    local_config, remote_config = (source_config(d, str(tmp_path / "tfds")) for d in (local, remote))
    sources.validate_section(remote_config.data)  # a bucket's prefix is not refused as "no directory"

    expected, local_warnings = prepared_splits(local_config, caplog)
    actual, remote_warnings = prepared_splits(remote_config, caplog)
    summary = "ela_image_text_folder[train]: skipped 4 of 8 records (corrupt: 2, empty: 1, missing: 1); first: "
    assert any(warning.startswith(summary) for warning in remote_warnings)
    assert remote_warnings == local_warnings
    assert [len(expected[split]) for split in ("train", "test")] == [4, 2]
    assert actual == expected

    local_stream, _ = batches(local_config, str(tmp_path), 3)
    first, state = batches(remote_config, str(tmp_path), 1)
    resumed, _ = batches(remote_config, str(tmp_path), 2, state)  # a new stream from the checkpointed position
    assert_same_batches(local_stream, first + resumed)


def test_coco_in_a_bucket_prepares_as_the_same_local_copy(gcs_bucket, tmp_path, caplog):  # noqa: F811
    local = str(tmp_path / "coco")
    fixtures.write_coco(local)
    remote = uploaded(local, f"{gcs_bucket.url}/coco")
    configs = [source_config(d, str(tmp_path / "tfds"), name="coco") for d in (local, remote)]
    sources.validate_section(configs[1].data)  # train2014/ and val2014/ are prefixes in a bucket
    (expected, _), (actual, _) = (prepared_splits(config, caplog) for config in configs)
    assert [len(actual[split]) for split in ("train", "test")] == [5, 3] and actual == expected
