"""Non-finite steps are skipped and counted, a diverged run stops naming the steps, and SIGTERM saves and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from ela_jax import parallel
from ela_jax.experiment import Experiment
from ela_jax.training.loop import BadStepMonitor, TrainingDiverged
from ela_jax.training.metrics import read_metrics
from ela_jax.training.step import Vocabulary, make_train_step
from tests.conftest import train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_non_finite_step_is_skipped_and_training_goes_on(tiny_config, tmp_path):
    config = tiny_config(batch_size=8)
    experiment = Experiment.build(config, str(tmp_path))
    optimizer, schedule = experiment.optimizer()
    state = experiment.state_factory().create(0)
    step = jax.jit(
        make_train_step(
            experiment.model, optimizer, schedule, config, Vocabulary.from_tokenizer(experiment.tokenizer, True)
        )
    )
    rng = np.random.default_rng(0)
    good = {
        "images": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "token_ids": rng.integers(5, experiment.tokenizer.vocab_size, (8, 16)).astype(np.int32),
        "mask": np.ones((8, 16), bool),
    }
    # An id past the vocabulary gathers NaN embeddings: a realistic way for one batch to poison the gradient.
    poisoned = {**good, "token_ids": np.full((8, 16), experiment.tokenizer.vocab_size + 7, np.int32)}
    state, metrics = step(state, parallel.host_batch_to_global(good, experiment.mesh))
    assert float(metrics["skipped"]) == 0.0
    before = jax.device_get(state.params)
    state, metrics = step(state, parallel.host_batch_to_global(poisoned, experiment.mesh))
    assert not np.isfinite(float(metrics["loss"]))
    assert float(metrics["skipped"]) == 1.0 and int(metrics["bad_steps_in_a_row"]) == 1
    after = jax.device_get(state.params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    state, metrics = step(state, parallel.host_batch_to_global(good, experiment.mesh))
    assert float(metrics["skipped"]) == 0.0 and int(state.bad_steps_in_a_row) == 0
    assert int(state.longest_bad_run) == 1 and int(state.step) == 3
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_a_persistent_non_finite_loss_stops_the_run_naming_the_steps():
    monitor = BadStepMonitor(max_bad_steps=3)
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row \(steps 11-13\).*checkpoint is step 10"):
        for step, in_a_row in [(9, 0), (10, 0), (11, 1), (12, 2), (13, 3), (14, 4)]:
            monitor.observe(step, {"bad_steps_in_a_row": in_a_row}, last_checkpoint=10)
    assert monitor.skipped == 3


SHORT_RUN = (
    "--config.total_steps=24",
    "--config.batch_size=16",
    "--config.data.num_train=128",
    "--config.data.num_test=32",
    "--config.checkpoint.every_steps=8",
    "--config.log.every_steps=1",
    "--config.log.progress=False",
    "--config.model.image.depth=1",
    "--config.model.text.depth=1",
)


def short_run(workdir: str) -> list[str]:
    return train_command(workdir, *SHORT_RUN)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full, interrupted = str(tmp_path / "full"), str(tmp_path / "interrupted")
    subprocess.run(short_run(full), cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    process = subprocess.Popen(
        short_run(interrupted), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics_path = os.path.join(interrupted, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(metrics_path) and len(read_metrics(interrupted)) >= 10):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    assert "preempted at step" in stdout
    stopped_at = int(stdout.split("preempted at step")[1].split(";")[0])
    assert 10 <= stopped_at < 24
    assert str(stopped_at) in os.listdir(os.path.join(interrupted, "checkpoints"))
    subprocess.run(short_run(interrupted), cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    expected, resumed = read_metrics(full), read_metrics(interrupted)
    assert [r["step"] for r in resumed] == list(range(1, 25))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    with (
        open(os.path.join(interrupted, "eval", "results.json")) as f,
        open(os.path.join(full, "eval", "results.json")) as g,
    ):
        assert json.load(f) == json.load(g)
