"""Non-finite steps are skipped and counted, a diverged run stops naming the steps, and SIGTERM saves and resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ela_jax import config as config_lib
from ela_jax import parallel
from ela_jax.data import pipeline
from ela_jax.experiment import Experiment, load_config
from ela_jax.training import loop
from ela_jax.training.checkpoint import Checkpointer, CheckpointError
from ela_jax.training.loop import BadStepMonitor, TrainingDiverged
from ela_jax.training.metrics import read_metrics
from tests.helpers import RESUME_EVERY, RESUME_STEPS, resume_config, train_command

pytestmark = pytest.mark.integration  # every test trains or spawns processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_non_finite_step_is_skipped_and_training_goes_on(tiny_config, tmp_path):
    config = tiny_config(batch_size=8)
    experiment = Experiment.build(config, str(tmp_path))
    factory = experiment.state_factory()
    state = factory.create(0)
    step = experiment.train_step(factory)
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
    "--config.evals.zeroshot.during_training=False",
)


def run_to_completion(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """The finished run, its stdout and stderr captured (pipes, as a cluster's log files)."""
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def short_run(workdir: str) -> list[str]:
    return train_command(workdir, *SHORT_RUN)


@pytest.fixture(scope="module")
def full_short_run(tmp_path_factory):
    """The uninterrupted CLI run that the SIGTERM and SIGKILL tests compare against."""
    full = str(tmp_path_factory.mktemp("full"))
    FULL_RUN.append(run_to_completion(short_run(full), {**os.environ, "JAX_PLATFORMS": "cpu"}))
    return full


FULL_RUN = []  # the subprocess.CompletedProcess of `full_short_run`


def test_a_log_file_reads_plain_progress_and_phase_lines(full_short_run):
    stderr = FULL_RUN[0].stderr
    lines = stderr.splitlines()
    ours = [line for line in lines if "[ela_jax]" in line]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[ela_jax\] ", line) for line in ours), stderr[-3000:]
    # No Python log record in absl's own format (level, date, thread id, file:line); XLA's C++ alarms may remain.
    assert not [line for line in lines if re.match(r"[IWEF]\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]", line)]
    assert "Downloading and preparing" not in FULL_RUN[0].stdout
    assert "\r" not in stderr
    for phase in ("preparing data", "compiling the train step", "saving checkpoint: step 8", "evaluating at step 24"):
        assert f"[ela_jax] {phase}" in stderr, phase
    assert (
        f"[ela_jax] done: eval/results.json, metrics.jsonl, tensorboard/, checkpoints/ and plots/ are in {full_short_run}"
        in stderr
    )
    steps = [line.split()[4] for line in stderr.splitlines() if " [ela_jax] step " in line]
    assert steps == [f"{step}/24" for step in range(1, 25)]  # log.every_steps=1, with log.progress=False too


def test_metrics_carry_wall_time_a_throughput_without_compile_time_and_the_final_evaluation(full_short_run):
    records = read_metrics(full_short_run)
    times = [record["wall_time"] for record in records]
    assert times == sorted(times)
    # Step 1 compiles: it is not timed, and step 2's rate is that of the steps after it.
    later = sorted(record["pairs_per_second"] for record in records[2:])
    assert "pairs_per_second" not in records[0]
    assert records[1]["pairs_per_second"] > 0.2 * later[len(later) // 2], [r.get("pairs_per_second") for r in records]
    with open(os.path.join(full_short_run, "eval", "results.json")) as f:
        rsum = json.load(f)["scores"]["global"]["rsum"]
    assert records[-1]["step"] == 24 and records[-1]["eval/global/rsum"] == pytest.approx(rsum)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches_an_uninterrupted_one(full_short_run, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full, interrupted = full_short_run, str(tmp_path / "interrupted")
    process = subprocess.Popen(
        short_run(interrupted), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics_path = os.path.join(interrupted, "metrics.jsonl")
    deadline = time.time() + 900  # generous: a loaded CI machine compiles slowly
    while time.time() < deadline and not (os.path.exists(metrics_path) and len(read_metrics(interrupted)) >= 10):
        time.sleep(0.2)
    assert len(read_metrics(interrupted)) >= 10, "the run did not reach step 10 in time"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    assert "preempted at step" in stdout
    stopped_at = int(stdout.split("preempted at step")[1].split(";")[0])
    assert 10 <= stopped_at < 24
    assert str(stopped_at) in os.listdir(os.path.join(interrupted, "checkpoints"))
    run_to_completion(short_run(interrupted), env)
    expected, resumed = read_metrics(full), read_metrics(interrupted)
    assert [r["step"] for r in resumed] == list(range(1, 25))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    with (
        open(os.path.join(interrupted, "eval", "results.json")) as f,
        open(os.path.join(full, "eval", "results.json")) as g,
    ):
        assert json.load(f) == json.load(g)


# ------------------------------------------------------------------------------ resume at any step, from anywhere


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    results = loop.train(resume_config(), workdir)
    return workdir, results


def assert_same_run(workdir: str, reference: str) -> None:
    expected, actual = read_metrics(reference), read_metrics(workdir)
    assert [r["step"] for r in actual] == list(range(1, RESUME_STEPS + 1))
    for before, after in zip(expected, actual):
        assert (before["loss"], before["grad_norm"]) == (after["loss"], after["grad_norm"]), before["step"]
    with (
        open(os.path.join(workdir, "eval", "results.json")) as f,
        open(os.path.join(reference, "eval", "results.json")) as g,
    ):
        assert json.load(f) == json.load(g)


@pytest.mark.parametrize("stop_at", [4, 5, 6], ids=["at_checkpoint", "just_after_checkpoint", "between_checkpoints"])
def test_a_run_preempted_at_any_step_resumes_bit_identically(uninterrupted, stop_at, monkeypatch, tmp_path):
    """The preemption notice arrives at step k (here through PreemptionWatch, as SIGTERM or JAX's sync point would
    deliver it); the rerun continues from k: every later loss and the evaluation equal the uninterrupted run's."""
    monkeypatch.setattr(loop.PreemptionWatch, "should_stop", lambda self, step: step == stop_at)
    workdir = str(tmp_path)
    assert loop.train(resume_config(), workdir) == {"preempted_at_step": stop_at}
    assert max(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))) == stop_at
    monkeypatch.undo()
    loop.train(resume_config(), workdir)
    assert_same_run(workdir, uninterrupted[0])


def test_config_resume_starts_from_another_runs_checkpoint(uninterrupted, tmp_path):
    """A new workdir with config.resume pointing at step 8 of another run continues that run exactly."""
    source, _ = uninterrupted
    workdir = str(tmp_path)
    loop.train(resume_config(resume=os.path.join(source, "checkpoints", "8")), workdir)
    expected, actual = read_metrics(source), read_metrics(workdir)
    assert [r["step"] for r in actual] == list(range(9, RESUME_STEPS + 1))
    assert [r["loss"] for r in actual] == [r["loss"] for r in expected[8:]]


def test_a_workdir_is_not_resumed_under_another_experiments_config(uninterrupted, tmp_path):
    """Resuming checkpoints under a changed objective would train one experiment on top of another and rewrite its
    config.json: refused, naming the key. Memory and compute knobs and a longer run may change between restarts; an
    explicit allow_config_change continues and keeps the old record."""
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        stored = f.read()
    other_loss = next(loss for loss in config_lib.ELA_LOSSES if loss != resume_config().objective.ela.loss)
    changed = resume_config(**{"objective.ela.loss": other_loss, "optim.lr": 0.5})
    with pytest.raises(config_lib.ConfigError, match=r"differs in objective\.ela\.loss, optim\.lr; use another"):
        loop.train(changed, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == stored  # the record of what the checkpoints are stays as it was

    knobs = {"model.remat": True, "data.num_threads": 1, "model.lexicon.chunk": 16, "eval.batch_size": 7}
    loop.check_resumed_config(resume_config(**knobs, total_steps=2 * RESUME_STEPS), workdir, RESUME_STEPS, True)

    changed.train.allow_config_change = True
    loop.check_resumed_config(changed, workdir, RESUME_STEPS, True)
    with open(os.path.join(workdir, f"config.before_step_{RESUME_STEPS}.json")) as f:
        assert f.read() == stored


def test_the_best_checkpoint_is_kept_by_its_evaluation_metric(tmp_path):
    workdir = str(tmp_path)
    config = resume_config(
        **{"eval.every_steps": 4, "checkpoint.best_metric": "global/rsum", "checkpoint.keep_best": 1}
    )
    loop.train(config, workdir)
    rsum_by_step = {
        record["step"]: record["eval/global/rsum"] for record in read_metrics(workdir) if "eval/global/rsum" in record
    }
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        rsum_by_step[RESUME_STEPS] = json.load(f)["scores"]["global"]["rsum"]
    kept = [int(name) for name in os.listdir(os.path.join(workdir, "best")) if name.isdigit()]
    assert len(kept) == 1 and rsum_by_step[kept[0]] == max(rsum_by_step.values())


def test_sigkill_during_saves_never_leaves_an_unresumable_workdir(full_short_run, tmp_path):
    """Kill -9 at random moments while a checkpoint is written every step (async saves), three times; each time the
    newest complete checkpoint restores, and the run finally completes with the uninterrupted run's losses."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full, killed = full_short_run, str(tmp_path / "killed")
    command = short_run(killed) + ["--config.checkpoint.every_steps=1"]
    rng = np.random.default_rng(0)
    for attempt in range(3):
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        checkpoints = os.path.join(killed, "checkpoints")
        before = complete_steps(checkpoints)
        deadline = time.time() + 900
        while time.time() < deadline and complete_steps(checkpoints) == before and process.poll() is None:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.5)))
        process.kill()
        process.wait()
        newest = max(complete_steps(checkpoints))
        experiment = Experiment.build(load_config(killed), killed)
        restored = experiment.restore_state()
        assert int(restored.step) == newest, f"attempt {attempt}"
    run_to_completion(command, env)
    assert [r["loss"] for r in read_metrics(killed)] == [r["loss"] for r in read_metrics(full)]


def complete_steps(directory: str) -> list[int]:
    """Step directories orbax has finalised (a save in flight is a temporary directory with another name)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


# ------------------------------------------------------------------------------ a damaged newest checkpoint


def damage_checkpoint(step_dir: str, how: str) -> None:
    state = os.path.join(step_dir, "state")
    if how == "truncated_data_file":
        chunks = os.path.join(state, "ocdbt.process_0", "d")
        largest = max((os.path.join(chunks, name) for name in os.listdir(chunks)), key=os.path.getsize)
        os.truncate(largest, os.path.getsize(largest) // 2)
    elif how == "no_metadata":
        os.remove(os.path.join(state, "_METADATA"))
    elif how == "no_data_iterator":
        shutil.rmtree(os.path.join(step_dir, "data"))
    elif how == "zeroed_manifest":
        manifest = os.path.join(state, "manifest.ocdbt")
        with open(manifest, "r+b") as f:
            f.write(bytes(os.path.getsize(manifest)))


def listing(directory: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, name), directory) for root, _, names in os.walk(directory) for name in names
    )


@pytest.mark.integration
@pytest.mark.parametrize("how", ["truncated_data_file", "no_metadata", "no_data_iterator", "zeroed_manifest"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_next_and_is_kept(uninterrupted, how, tmp_path, caplog):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    damage_checkpoint(os.path.join(checkpoints, str(RESUME_STEPS)), how)
    damaged_files = listing(os.path.join(checkpoints, str(RESUME_STEPS)))
    experiment = Experiment.build(load_config(workdir), workdir)
    data_iterator = iter(pipeline.train_dataset(experiment.config, experiment.tokenizer, 0, 1))
    checkpointer = Checkpointer(checkpoints, keep=3)
    state, step = checkpointer.restore_newest(experiment.state_factory().abstract_with_shardings(), data_iterator)
    checkpointer.close()
    assert step == int(state.step) == RESUME_STEPS - RESUME_EVERY
    skipped = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(skipped) == 1 and f"checkpoint step {RESUME_STEPS} in {checkpoints} does not restore (" in skipped[0]
    assert sorted(os.listdir(checkpoints)) == ["4", "8"]  # out of orbax's reach: a new step 12 cannot collide
    assert listing(os.path.join(checkpoints + "_damaged", str(RESUME_STEPS))) == damaged_files  # nothing deleted


@pytest.mark.integration
def test_evaluation_reads_the_newest_checkpoint_that_restores_and_moves_nothing(uninterrupted, tmp_path, caplog):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    damage_checkpoint(os.path.join(checkpoints, str(RESUME_STEPS)), "no_metadata")
    state, step = Experiment.build(load_config(workdir), workdir).restore_checkpoint()
    assert step == int(state.step) == RESUME_STEPS - RESUME_EVERY
    assert any(
        f"checkpoint step {RESUME_STEPS} in {checkpoints} does not restore" in r.getMessage() for r in caplog.records
    )
    assert sorted(os.listdir(checkpoints)) == ["12", "4", "8"] and not os.path.exists(checkpoints + "_damaged")


def evaluate_command(workdir: str, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ela_jax.evaluate", "--workdir", workdir, *overrides]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two evaluate commands; tests/test_readers.py covers each behaviour without them
@pytest.mark.integration
def test_the_evaluate_command_past_a_damaged_checkpoint_keeps_the_runs_record(uninterrupted, tmp_path):
    """One line for the skipped step, no traceback; the reader's file is named by the step it read, and the run's own
    eval/results.json (step 12) stays as training wrote it. A config.json edited away from the checkpoints: one line."""
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        record = f.read()
    damage_checkpoint(os.path.join(workdir, "checkpoints", str(RESUME_STEPS)), "truncated_data_file")
    result = evaluate_command(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    skipped = [line for line in result.stderr.splitlines() if "does not restore" in line]
    assert len(skipped) == 1 and f"checkpoint step {RESUME_STEPS} in " in skipped[0]
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        assert f.read() == record
    with open(os.path.join(workdir, "eval", f"results_step{RESUME_STEPS - RESUME_EVERY}.json")) as f:
        assert json.load(f)["step"] == RESUME_STEPS - RESUME_EVERY

    config_path = os.path.join(workdir, "config.json")
    with open(config_path) as f:
        edited = json.load(f)
    edited["model"]["embed_dim"] *= 2
    with open(config_path, "w") as f:
        json.dump(edited, f)
    result = evaluate_command(workdir)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"checkpoint error: no checkpoint in {workdir}/checkpoints restores"), result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) <= 5, result.stderr[-3000:]


@pytest.mark.integration
def test_a_run_resumes_past_a_damaged_checkpoint_as_if_uninterrupted(uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    os.remove(os.path.join(workdir, "eval", "results.json"))
    damage_checkpoint(os.path.join(workdir, "checkpoints", str(RESUME_STEPS)), "no_metadata")
    loop.train(resume_config(), workdir)
    assert_same_run(workdir, uninterrupted[0])
    assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", str(RESUME_STEPS)))


@pytest.mark.integration
def test_a_workdir_none_of_whose_checkpoints_restores_stops_and_moves_nothing(uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    for step in os.listdir(checkpoints):
        damage_checkpoint(os.path.join(checkpoints, step), "no_metadata")
    with pytest.raises(CheckpointError, match=rf"no checkpoint in {checkpoints} restores \(newest, step 12: "):
        loop.train(resume_config(), workdir)
    assert sorted(os.listdir(checkpoints)) == ["12", "4", "8"] and not os.path.exists(checkpoints + "_damaged")


# ------------------------------------------------------------------------------ a failed asynchronous save

# The training CLI on a disk that fills up as the first checkpoint is written: the file-size limit drops then (writes
# past it fail with EFBIG, SIGXFSZ ignored), as `ulimit -f` would.
FULL_DISK_TRAIN = """
import resource, signal, sys
from absl import app
from ela_jax import train
from ela_jax.training import checkpoint

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
save = checkpoint.Checkpointer.save
def save_on_a_full_disk(self, *args, **kwargs):
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
    return save(self, *args, **kwargs)
checkpoint.Checkpointer.save = save_on_a_full_disk
sys.argv = ["ela_jax.train", *sys.argv[1:]]
app.run(train.main)
"""


@pytest.mark.integration
def test_a_failed_asynchronous_save_stops_the_run_in_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    command = [sys.executable, "-c", FULL_DISK_TRAIN, *short_run(workdir)[3:], "--config.checkpoint.every_steps=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    # Progress lines ("[ela_jax] ...") come before; the failure itself is the one last line, reported once.
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr[-3000:]
    assert [line for line in lines if "File too large" in line] == lines[-1:], result.stderr[-3000:]
    checkpoints = os.path.join(workdir, "checkpoints")
    assert lines[-1].startswith(f"checkpoint error: saving a checkpoint under {checkpoints} failed: [Errno 27] ")
    assert "File too large: " + checkpoints in lines[-1]
    assert len(read_metrics(workdir)) <= 4  # stopped by the next save at the latest, not at the end of the run
    assert not complete_steps(checkpoints)
