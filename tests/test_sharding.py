"""Sharded training equals single-device training under every mesh preset (8 fake CPU devices), FSDP and TP really
split parameters, and the row-sharded contrastive terms equal the dense ones."""

from __future__ import annotations


import numpy as np
import pytest
from tests.helpers import module_report

pytestmark = pytest.mark.integration  # spawns an 8-device process

# Enough Adam steps to show the optimizer state is sharded right; past a few steps the trajectory is chaotic, and
# float32 summation order alone (which differs by CPU model) moves it by percent.
STEPS = 4
COMPARED = ("loss", "loss_global", "loss_fine", "loss_ela", "loss_mlm", "loss_flops", "grad_norm")


def run_preset(preset: str, devices: int, workdir: str) -> dict:
    return module_report("tests.sharded_losses", preset, workdir, STEPS, devices=devices)


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    return run_preset("single", 1, str(tmp_path_factory.mktemp("single")))


@pytest.mark.parametrize(
    "preset, mesh",
    [
        # fsdp_tp with mesh.data = 2 exercises all three mesh axes' code paths (the batch over data and fsdp together,
        # as a multi-host FSDP run splits it; kernels over fsdp and tensor); the presets repeat them on fewer axes.
        pytest.param("dp", [8, 1, 1], marks=pytest.mark.slow),
        pytest.param("fsdp", [1, 8, 1], marks=pytest.mark.slow),
        pytest.param("fsdp_tp", [1, 4, 2], marks=pytest.mark.slow),
        ("data_fsdp_tp", [2, 2, 2]),
    ],
)
def test_mesh_preset_trains_like_one_device(single_device, preset, mesh, tmp_path):
    sharded = run_preset(preset, devices=8, workdir=str(tmp_path))
    assert [sharded["mesh"][axis] for axis in ("data", "fsdp", "tensor")] == mesh
    assert len(sharded["losses"]) == STEPS
    for step, (reference, actual) in enumerate(zip(single_device["losses"], sharded["losses"])):
        # Step 0 is one forward and backward pass: only float32 summation order differs. Later steps follow Adam,
        # whose normalised updates grow those reorderings (to about 2e-4 by step 3, then exponentially); a wrong
        # sharding of parameters or optimizer state is off by far more, from step 0 or 1 on.
        rtol = 1e-5 if step == 0 else 2e-3
        for key in COMPARED:
            np.testing.assert_allclose(actual[key], reference[key], rtol=rtol, err_msg=f"{key} at step {step}")
    for name, reference in single_device["log_scale_gradients"].items():
        assert reference != 0.0, f"the loss does not depend on {name}"
        np.testing.assert_allclose(sharded["log_scale_gradients"][name], reference, rtol=1e-4, err_msg=name)
    for name, gap in sharded["contrastive_gaps"].items():
        assert gap < 1e-5, f"row-sharded {name} differs from the dense term by {gap:.2e} (relative)"
    parameters = sharded["sharding"]["parameters"]
    kernel = parameters["image_tower/encoder/layer_0/mlp/intermediate/kernel"]
    embedding = parameters["text_tower/word_embeddings/embedding"]
    if preset == "dp":
        assert kernel["per_device_shape"] == kernel["shape"]
    if preset == "fsdp":  # each device stores 1/8 of every large kernel
        assert kernel["spec"][0] == "fsdp"  # (its `mlp` axis maps to `tensor`, of size 1 here)
        assert kernel["per_device_shape"] == [kernel["shape"][0] // 8, kernel["shape"][1]]
    if preset in ("fsdp_tp", "data_fsdp_tp"):
        fsdp, tensor = mesh[1:]
        assert kernel["spec"] == ["fsdp", "tensor"]
        assert kernel["per_device_shape"] == [kernel["shape"][0] // fsdp, kernel["shape"][1] // tensor]
        assert embedding["spec"] == ["tensor", "fsdp"]
        assert embedding["shape"][0] % 128 == 0  # the vocabulary is padded to split over `tensor`
        assert embedding["per_device_shape"] == [embedding["shape"][0] // tensor, embedding["shape"][1] // fsdp]
