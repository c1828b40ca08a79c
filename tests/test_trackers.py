"""Experiment trackers and the profiler trace: off by default, fed every record when on, and each switched on by a
config key alone."""

from __future__ import annotations

import os
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from ela_jax import config as config_lib
from ela_jax.training import metrics as metrics_lib
from ela_jax.training import trackers
from ela_jax.training.profiling import StepTrace


class FakeWandb:
    """The part of the `wandb` module a tracker uses; records what it was given."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **settings):
        self.inits.append(settings)
        return self

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished += 1


def wandb_config(**settings):
    config = config_lib.base_config()
    config.log.wandb.update({"project": "ela", **settings})
    return config


def test_no_tracker_runs_by_default(tmp_path):
    assert trackers.start(config_lib.base_config(), str(tmp_path)) == []


def test_wandb_gets_every_record_and_the_final_evaluation(tmp_path):
    client, workdir = FakeWandb(), str(tmp_path)
    [tracker] = trackers.start(wandb_config(entity="team"), workdir, wandb_client=client)
    writer = metrics_lib.MetricWriter(workdir, 0, trackers=[tracker])
    writer.write(10, {"loss": 2.0, "pairs_per_second": 640.0})
    writer.close()
    metrics_lib.MetricWriter.final_evaluation(workdir, 10, {"eval/global/rsum": 250.0}, trackers=[tracker])
    tracker.close()
    assert client.logged == [(10, {"loss": 2.0, "pairs_per_second": 640.0}), (10, {"eval/global/rsum": 250.0})]
    [settings] = client.inits
    assert (settings["project"], settings["entity"], settings["name"]) == ("ela", "team", os.path.basename(workdir))
    assert settings["config"]["log"]["wandb"]["project"] == "ela" and client.finished == 1


def test_a_restarted_run_continues_its_wandb_run(tmp_path):
    client = FakeWandb()
    for _ in range(2):
        trackers.start(wandb_config(), str(tmp_path), wandb_client=client)[0].close()
    first, second = client.inits
    assert first["id"] == second["id"] and second["resume"] == "allow"


def test_wandb_without_the_extra_installed_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(config_lib.ConfigError, match=r"wandb is not installed; pip install 'ela_jax\[wandb\]'"):
        trackers.start(wandb_config(), str(tmp_path))


def test_a_user_tracker_is_made_from_its_module_and_closed_however_the_run_ends(tmp_path, monkeypatch):
    made = []

    class Recorder:
        def __init__(self, config, workdir):
            self.workdir, self.logged, self.closed = workdir, [], False
            made.append(self)

        def log(self, step, metrics):
            self.logged.append(step)

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "my_trackers", types.SimpleNamespace(make=Recorder))
    config = config_lib.base_config()
    config.log.tracker = "my_trackers:make"
    with pytest.raises(RuntimeError, match="diverged"):
        with trackers.opened(config, str(tmp_path), enabled=True) as started:
            started[0].log(3, {"loss": 1.0})
            raise RuntimeError("diverged")
    assert made[0].workdir == str(tmp_path) and made[0].logged == [3] and made[0].closed
    with trackers.opened(config, str(tmp_path), enabled=False) as started:  # not the chief process
        assert started == [] and len(made) == 1


def test_a_tracker_that_does_not_import_fails_in_one_line(tmp_path):
    config = config_lib.base_config()
    config.log.tracker = "no_such_module_here:make"
    with pytest.raises(config_lib.ConfigError, match=r"log.tracker='no_such_module_here:make' names no importable"):
        trackers.start(config, str(tmp_path))


def test_profile_steps_write_a_trace_of_the_steps_after_the_compiling_one(tmp_path):
    step_fn = jax.jit(lambda x: x @ x + 1.0)
    trace = StepTrace(str(tmp_path), count=2, first=0, start_step=0)
    assert list(trace.steps) == [2, 3]
    x, stopped = jnp.ones((8, 8)), []
    for step in range(1, 6):
        with trace.step(step):
            x = step_fn(x) / 100.0
        if trace.step_done(step, x):
            stopped.append(step)
        assert trace.tracing == (step == 2), step
    assert stopped == [3]
    written = [name for _, _, names in os.walk(tmp_path / "profile") for name in names]
    assert any(name.endswith(".xplane.pb") for name in written), written
