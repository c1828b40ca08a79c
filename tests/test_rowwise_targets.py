"""ELA's targets on a mesh: computed row-wise per device they equal the plain computation, and no device holds the
[global batch, vocab] array that XLA gathers for the plain one's scatters and top-k."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rowwise_targets_equal_the_plain_ones_without_a_global_batch_by_vocab_array():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.sharded_targets"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["plain_holds_batch_by_vocab"]  # the check finds the array where XLA gathers it
    assert not report["rowwise_holds_batch_by_vocab"], report
    assert report["largest_difference"] == 0.0, report
