"""Golden sharding reports: each mesh preset's `sharding.json` for the tiny model on 8 devices, computed from abstract
shapes and the logical axis rules on an AbstractMesh (no devices needed), diffed against tests/golden/.

A deliberate change of the rules, the presets or the model's parameters updates the goldens with
    python -m tests.test_sharding_golden
and the diff of tests/golden/ then shows what each device stores differently.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from jax.sharding import AbstractMesh

from configs import mesh_presets
from ela_jax import config as config_lib
from ela_jax import parallel
from ela_jax.data import tokenizer as tokenizer_lib
from ela_jax.models.ela import ELAModel
from ela_jax.training import optimizer as optimizer_lib
from ela_jax.training.state import StateFactory
from tests.helpers import make_tiny_config

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
NUM_DEVICES = 8


def golden_path(preset: str) -> str:
    return os.path.join(GOLDEN_DIR, f"sharding_{preset}.json")


def sharding_report(preset: str) -> dict:
    """What training with `--config ...:preset` on NUM_DEVICES devices writes to sharding.json (the same factory and
    report the loop uses, on an abstract mesh)."""
    config = mesh_presets.apply_overlays(make_tiny_config(), preset)
    with tempfile.TemporaryDirectory() as workdir:
        config.model.vocab_size = tokenizer_lib.from_config(config.tokenizer, workdir).vocab_size
    mesh = AbstractMesh(config_lib.resolve_mesh_shape(config.mesh, NUM_DEVICES), parallel.MESH_AXES)
    optimizer = optimizer_lib.make_optimizer(config.optim, config.total_steps)[0]
    factory = StateFactory(ELAModel(config.model), optimizer, config, mesh)
    return parallel.sharding_report(mesh, factory.param_shardings, factory.abstract_params)


@pytest.mark.parametrize("preset", sorted(mesh_presets.MESH_PRESETS))
def test_sharding_matches_the_golden_report(preset):
    with open(golden_path(preset)) as f:
        golden = json.load(f)
    report = sharding_report(preset)
    assert report["mesh"] == golden["mesh"]
    changed = sorted(
        name
        for name in set(golden["parameters"]) | set(report["parameters"])
        if golden["parameters"].get(name) != report["parameters"].get(name)
    )
    assert changed == [], f"regenerate with `python -m tests.test_sharding_golden` if intended; first: {changed[:5]}"


def test_the_goldens_differ_where_the_presets_do():
    """The diff is meaningful: FSDP stores 1/8 of a large kernel per device, data parallelism all of it."""
    reports = {}
    for preset in mesh_presets.MESH_PRESETS:
        with open(golden_path(preset)) as f:
            reports[preset] = json.load(f)
    kernel = "text_tower/encoder/layer_0/mlp/intermediate/kernel"
    kernels = {preset: report["parameters"].get(kernel) for preset, report in reports.items()}
    assert kernels["dp"]["per_device_shape"] == kernels["dp"]["shape"], kernels
    assert kernels["fsdp"]["per_device_shape"][0] * NUM_DEVICES == kernels["fsdp"]["shape"][0], kernels


def regenerate() -> None:
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    for preset in sorted(mesh_presets.MESH_PRESETS):
        parallel.write_sharding_report(golden_path(preset), sharding_report(preset))
        print(golden_path(preset))


if __name__ == "__main__":
    regenerate()
