"""Multi-process training: the local launcher's 2 processes x 2 CPU devices reproduce 1 process x 4 devices, and the
launcher reports and stops failed jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ela_jax.data import world_tfds
from ela_jax.training.metrics import read_metrics
from launch import local
from tests.helpers import make_tiny_config, write_tiny_config_file

pytestmark = pytest.mark.integration  # every test spawns processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The shared tiny model (tests/helpers.py), logging every step and saving once.
TINY_OVERRIDES = {"log.every_steps": 1, "checkpoint.every_steps": 0, "data.num_test": 32}


def train_args(config_path: str, workdir: str) -> list[str]:
    return [sys.executable, "-m", "ela_jax.train", "--config", str(config_path), "--workdir", workdir]


# About 2 minutes of CPU (two jobs compile the full objective); test_hosts_read_their_rows_of_the_same_global_batches
# and the sharded-vs-single-device tests (tests/test_sharding.py) cover its parts in the default run.
@pytest.mark.slow
def test_two_processes_of_two_devices_train_like_one_process_of_four(tmp_path):
    config_path = tmp_path / "tiny.py"
    write_tiny_config_file(config_path, TINY_OVERRIDES)
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    # The dataset is written once, before the runs that read it start.
    world_tfds.world_builder(make_tiny_config(**TINY_OVERRIDES).data)
    # Both runs at once: each process compiles on one core most of the time, and the machine has two.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    reference = subprocess.Popen(
        train_args(config_path, single), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    launcher = [sys.executable, "-m", "launch.local", "--processes", "2", "--devices-per-process", "2", "--"]
    finished = subprocess.run(
        launcher + train_args(config_path, multi), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    reference_output = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, reference_output[-3000:]
    assert finished.returncode == 0, finished.stdout[-6000:]

    expected, got = read_metrics(single), read_metrics(multi)
    assert [r["step"] for r in got] == list(range(1, 21))  # written once per step, by process 0 only
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected], rtol=1e-4)
    assert got[-1]["loss"] != got[0]["loss"]  # it trained
    with open(os.path.join(multi, "sharding.json")) as f:
        assert json.load(f)["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    # Both processes saved into one orbax checkpoint, each with its own data-iterator position.
    assert os.listdir(os.path.join(multi, "checkpoints")) == ["20"]
    data_positions = sorted(os.listdir(os.path.join(multi, "checkpoints", "20", "data")))
    assert [name for name in data_positions if name.startswith("process_")] == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    with (
        open(os.path.join(multi, "eval", "results.json")) as f,
        open(os.path.join(single, "eval", "results.json")) as g,
    ):
        multi_scores, single_scores = json.load(f)["scores"], json.load(g)["scores"]
    for score, metrics in single_scores.items():
        np.testing.assert_allclose(multi_scores[score]["rsum"], metrics["rsum"], atol=1e-6, err_msg=score)
    # Every line of output carries its process's prefix.
    assert all(line.startswith(("[0] ", "[1] ")) for line in finished.stdout.splitlines() if line)


def test_hosts_read_their_rows_of_the_same_global_batches(tmp_path):
    from ela_jax.data import pipeline, tokenizer

    config = make_tiny_config(**{"batch_size": 8, "data.num_train": 20, "data.num_test": 8})
    vocab = tokenizer.from_config(config.tokenizer, str(tmp_path))
    one_host = iter(pipeline.train_dataset(config, vocab, 0, 1))
    expected = [next(one_host) for _ in range(4)]  # 20 images make 2.5 batches of 8: 4 steps cross an epoch
    for hosts in (2, 4):
        streams = [iter(pipeline.train_dataset(config, vocab, index, hosts)) for index in range(hosts)]
        for batch in expected:
            parts = [next(stream) for stream in streams]
            for key, value in batch.items():
                np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value, err_msg=key)


def test_a_failing_process_stops_the_job_with_its_status(tmp_path):
    # Process 1 fails at once; process 0 would run for a minute unless the launcher stops it.
    script = "import os, sys, time; print('up', flush=True); sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)"
    start = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "launch.local", "--processes", "2", "--", sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 3
    assert time.monotonic() - start < 30
    lines = [line for line in finished.stdout.splitlines() if line]
    # Process 0 may be stopped before it prints; whatever arrives carries its process's prefix.
    assert "[1] up" in lines and set(lines) <= {"[0] up", "[1] up"}
    assert "process 1 exited with status 3" in finished.stderr


def test_each_process_gets_the_job_coordinates_and_its_device_count():
    base = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8", "HOME": "/h"}
    env = local.process_env(base, process_id=1, processes=3, devices=2, port=1234)
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]) == ("3", "1", "cpu")
    # The device count is replaced, other XLA flags are kept.
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2"
    assert env["HOME"] == "/h"
