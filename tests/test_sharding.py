"""Sharded training equals single-device training (8 fake CPU devices), and FSDP/TP really split parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_mesh(data: int, fsdp: int, tensor: int, devices: int, workdir: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.sharded_losses", str(data), str(fsdp), str(tensor), workdir],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    return run_mesh(1, 1, 1, 1, str(tmp_path_factory.mktemp("single")))


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)], ids=["dp8", "dp2_fsdp2_tp2"])
def test_sharded_steps_match_one_device(single_device, mesh, tmp_path):
    sharded = run_mesh(*mesh, devices=8, workdir=str(tmp_path))
    assert sharded["devices"] == 8
    for reference, actual in zip(single_device["losses"], sharded["losses"]):
        for key in ("loss", "loss_global", "loss_fine", "loss_ela", "loss_mlm", "grad_norm"):
            np.testing.assert_allclose(actual[key], reference[key], rtol=1e-4, err_msg=key)
    if mesh == (2, 2, 2):
        parameters = sharded["sharding"]["parameters"]
        kernel = parameters["image_tower/encoder/layer_0/mlp/intermediate/kernel"]
        assert kernel["spec"] == ["fsdp", "tensor"]
        assert kernel["per_device_shape"] == [kernel["shape"][0] // 2, kernel["shape"][1] // 2]
        embedding = parameters["text_tower/word_embeddings/embedding"]
        assert embedding["spec"] == ["tensor", "fsdp"]
