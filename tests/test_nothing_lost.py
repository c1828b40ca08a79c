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

from ela_jax import parallel
from ela_jax.experiment import Experiment
from ela_jax.training import loop, optimizer as optimizer_lib
from ela_jax.training.checkpoint import Checkpointer
from ela_jax.training.step import Vocabulary, make_train_step
from ela_jax.training.workdir_lock import WorkdirBusy, WorkdirLock
from tests.helpers import HOLD_LOCK, make_tiny_config, set_keys, train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.integration


def finite_and_small(tree, bound: float = 1e3) -> bool:
    return all(np.isfinite(leaf).all() and np.abs(leaf).max() < bound for leaf in jax.tree.leaves(jax.device_get(tree)))


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
