"""Outputs that still need a local path (exports replaced as whole folders, the ablation grid) refuse a URL up front,
in one line, before anything is written (no local folder named `gs:`). Workdirs on object storage: test_bucket_workdirs."""

from __future__ import annotations

import os
import re

import pytest

from ela_jax import ablate
from ela_jax.config import ConfigError
from ela_jax.paths import require_local
from ela_jax.retrieval import export, heatmap


@pytest.mark.parametrize("path", ["gs://b/runs/x", "s3://b/x", "fake+scheme://x", "file:///tmp/x"])
def test_urls_are_refused_naming_the_value(path):
    with pytest.raises(ConfigError, match=f"--workdir {re.escape(path)} is a remote URL.*mount the bucket"):
        require_local(path, "--workdir")


@pytest.mark.parametrize("path", ["runs/x", "/mnt/bucket/runs/x", "./gs:/x", "runs/a:b", "~/runs"])
def test_local_paths_pass_unchanged(path):
    assert require_local(path, "--workdir") == path


def test_local_only_outputs_refuse_a_bucket_before_writing(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--output gs://b/out is a remote URL"):
        export.export_workdir(str(tmp_path), "gs://b/out")
    with pytest.raises(ConfigError, match="--output gs://b/out is a remote URL"):
        heatmap.write_heatmaps(str(tmp_path), "gs://b/out")
    with pytest.raises(ConfigError, match="root gs://b/grid is a remote URL"):
        ablate.run_grid(tiny_config(), [], [0], "gs://b/grid")
    assert os.listdir(tmp_path) == []
