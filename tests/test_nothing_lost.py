"""Nothing a run has earned is lost: the non-finite guard keeps good parameters and good checkpoints, one run holds a
workdir, a damaged newest checkpoint falls back to an older one, a failed save stops the run, config.json survives
a kill."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ela_jax import parallel, paths
from ela_jax.experiment import Experiment
from ela_jax.training import loop, optimizer as optimizer_lib
from ela_jax.training.checkpoint import Checkpointer
from ela_jax.training.step import Vocabulary, make_train_step
from ela_jax.training.workdir_lock import WorkdirBusy, WorkdirLock
from tests.helpers import HOLD_LOCK, make_tiny_config, set_keys, train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finite_and_small(tree, bound: float = 1e3) -> bool:
    return all(np.isfinite(leaf).all() and np.abs(leaf).max() < bound for leaf in jax.tree.leaves(jax.device_get(tree)))


@pytest.mark.integration
def test_a_step_whose_update_is_not_finite_is_skipped(tmp_path):
    """optim.eps=0: the loss and gradient are finite, Adam's update 0/0 is not; the parameters stay as they were."""
    config = make_tiny_config(batch_size=8)
    experiment = Experiment.build(config, str(tmp_path))
    state = experiment.state_factory().create(0)
    broken = set_keys(make_tiny_config(), {"optim.eps": 0.0})
    optimizer, schedule = optimizer_lib.make_optimizer(broken.optim, config.total_steps)
    vocabulary = Vocabulary.from_tokenizer(experiment.tokenizer, True)
    step = jax.jit(make_train_step(experiment.model, optimizer, schedule, config, vocabulary))
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "token_ids": rng.integers(5, experiment.tokenizer.vocab_size, (8, 16)).astype(np.int32),
        "mask": np.ones((8, 16), bool),
    }
    before = jax.device_get(state.params)
    state, metrics = step(state, parallel.host_batch_to_global(batch, experiment.mesh))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["skipped"]) == 1.0
    after = jax.device_get(state.params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


@pytest.mark.integration
def test_a_diverging_run_keeps_and_names_a_finite_checkpoint(tmp_path):
    """optim.lr=1e30: step 1 (warm-up lr 0) is good and saved, every later update overflows. No skipped step saves
    over the good checkpoint, and the stop message names it."""
    workdir = str(tmp_path)
    config = make_tiny_config(
        **{"optim.lr": 1e30, "checkpoint.every_steps": 1, "checkpoint.keep": 2, "train.max_bad_steps": 3}
    )
    with pytest.raises(loop.TrainingDiverged, match=r"last good checkpoint is step 1\."):
        loop.train(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    assert sorted(name for name in os.listdir(checkpoints) if name.isdigit()) == ["1"]
    experiment = Experiment.build(make_tiny_config(**{"optim.lr": 1e30}), workdir)
    restored = Checkpointer(checkpoints, keep=2, create=False).restore(
        1, experiment.state_factory().abstract_with_shardings()
    )
    assert finite_and_small(restored.params)


def test_a_run_that_diverges_before_any_checkpoint_names_none():
    monitor = loop.BadStepMonitor(max_bad_steps=2)
    with pytest.raises(loop.TrainingDiverged, match="last good checkpoint is none"):
        for step in (1, 2, 3):
            monitor.observe(step, {"bad_steps_in_a_row": step}, last_checkpoint=None)


# ------------------------------------------------------------------------------ one run per workdir


@pytest.mark.integration
def test_a_second_run_on_a_held_workdir_stops_at_once_naming_the_holder(tmp_path):
    workdir = str(tmp_path)
    with WorkdirLock(workdir, loop.RUN_LOCK_FILE):
        with pytest.raises(WorkdirBusy, match=rf"in use by pid {os.getpid()} on {socket.gethostname()} since"):
            loop.train(make_tiny_config(), workdir)
        assert not os.path.exists(os.path.join(workdir, "config.json"))  # nothing of the holder's was touched
        result = subprocess.run(
            train_command(workdir, "--config.total_steps=1"), cwd=REPO, capture_output=True, text=True, timeout=600
        )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"workdir busy: {workdir} is in use by pid {os.getpid()} on {socket.gethostname()} since "
        + result.stderr.split(" since ")[1].strip()
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_a_lock_left_by_a_killed_run_does_not_block_a_restart(tmp_path):
    """The record a killed run leaves in the lock file is only a record: the kernel dropped its lock."""
    workdir = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, workdir, loop.RUN_LOCK_FILE], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert holder.stdout.readline().strip() == "held"
    assert not WorkdirLock(workdir, loop.RUN_LOCK_FILE).acquire()
    holder.kill()
    holder.wait()
    lock = WorkdirLock(workdir, loop.RUN_LOCK_FILE)
    assert lock.acquire()
    with open(lock.path) as f:
        assert json.load(f)["pid"] == os.getpid()
    lock.release()


# ------------------------------------------------------------------------------ config.json


def test_a_write_that_fails_midway_leaves_the_previous_file(tmp_path):
    path = str(tmp_path / "config.json")
    paths.write_text(path, '{"seed": 0}')
    with pytest.raises(UnicodeEncodeError):
        paths.write_text(path, '{"seed": 1, "note": "\ud800"}')  # fails after the file was opened for writing
    with open(path) as f:
        assert f.read() == '{"seed": 0}'
    assert os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("content", ["", '{"seed": 0, "optim": {"lr"'])
def test_an_empty_or_cut_config_json_does_not_block_resuming(tmp_path, content, caplog):
    workdir = str(tmp_path)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(content)
    loop.check_resumed_config(make_tiny_config(), workdir, resumed_step=8, is_chief=True)
    assert any("config.json is unreadable" in record.getMessage() for record in caplog.records)


PREPARE_WORLD = """
import sys
from ela_jax import config as config_lib
from ela_jax.data import world_tfds
data = config_lib.base_config().data
data.dir, data.num_train, data.num_test, data.image_size = sys.argv[1], 3000, 10, 16
print("train examples:", world_tfds.world_builder(data).info.splits["train"].num_examples)
"""


@pytest.mark.integration
def test_two_processes_preparing_one_new_world_together_both_read_it(tmp_path):
    # Ablation workers started together on a world nobody has prepared: one prepares, the other waits.
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE_WORLD, str(tmp_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        assert "train examples: 3000" in out.splitlines()
