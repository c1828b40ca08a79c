"""Readers of a workdir (`evaluate`, `zeroshot`, exports) never change the training run's records: they write their
own files, named and labelled with the step they read and every override; a checkpoint they cannot read is reported
in one line, once per skipped step. The trainer itself changes a workdir's records only after its checkpoints
restored."""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import pathlib
import sys
import types

import pytest
from absl import flags
from absl import logging as absl_logging

from ela_jax import evaluate, paths, train_errors
from ela_jax.convert import to_pytorch
from ela_jax.retrieval import export
from ela_jax.config import ConfigError
from ela_jax.data import tokenizer
from ela_jax.experiment import load_config
from ela_jax.training import checkpoint, loop
from ela_jax.training.checkpoint import Checkpointer, CheckpointError
from tests.helpers import make_tiny_config


def write_workdir(path: str, **overrides) -> str:
    """A workdir as training leaves it, without training: config.json and the final eval/results.json (step 20)."""
    os.makedirs(os.path.join(path, "eval"), exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(make_tiny_config(**overrides).to_json_best_effort(indent=1))
    with open(os.path.join(path, "eval", "results.json"), "w") as f:
        json.dump({"step": 20, "split": "test", "scores": {"global": {"rsum": 255.2}}}, f)
    return path


class FakeEvaluator:
    output = "results.json"

    def __call__(self, encoder, step: int) -> dict:
        return {"step": step, "split": "test", "scores": {"global": {"rsum": 15.4}}}


def fake_experiment(workdir: str, config, restored_step: int):
    state = types.SimpleNamespace(step=restored_step, params=None)
    return types.SimpleNamespace(
        workdir=workdir, config=config, restore_state=lambda step: state, encoder=lambda params, batch_size: None
    )


def test_evaluate_never_replaces_the_runs_record_and_records_step_and_overrides(tmp_path):
    workdir = write_workdir(str(tmp_path / "run"))
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        record = f.read()
    config = load_config(workdir)
    config.unlock()
    config.model.global_pool = "cls"
    evaluate.run_evaluator(fake_experiment(workdir, config, restored_step=15), FakeEvaluator())
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        assert f.read() == record  # the training run's final record is untouched
    (written,) = [name for name in os.listdir(os.path.join(workdir, "eval")) if name != "results.json"]
    assert written.startswith("results_step15_") and written.endswith(".json")
    with open(os.path.join(workdir, "eval", written)) as f:
        results = json.load(f)
    assert results["step"] == 15 and results["overrides"] == {"model.global_pool": "cls"}
    assert results["read_by"] == "ela_jax.evaluate" and results["workdir"] == os.path.abspath(workdir)

    # Without overrides: named by the step alone; under --output: there, not in the workdir.
    evaluate.run_evaluator(fake_experiment(workdir, load_config(workdir), 20), FakeEvaluator())
    with open(os.path.join(workdir, "eval", "results_step20.json")) as f:
        assert json.load(f)["overrides"] == {}
    output = str(tmp_path / "elsewhere")
    evaluate.run_evaluator(fake_experiment(workdir, config, 20), FakeEvaluator(), output_dir=output)
    assert len(os.listdir(output)) == 1 and os.listdir(output)[0].startswith("results_step20_")


def test_a_reader_that_cannot_write_says_so_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    workdir = write_workdir(str(tmp_path))
    before = sorted(os.listdir(os.path.join(workdir, "eval")))

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path + ".tmp")

    monkeypatch.setattr(evaluate.paths, "write_text", full_disk)
    with pytest.raises(SystemExit) as error:
        evaluate.run_evaluator(fake_experiment(workdir, load_config(workdir), 20), FakeEvaluator())
    message = str(error.value.code)
    assert message.startswith(f"output error: writing {workdir}/eval/results_step20.json failed (No space left")
    assert "\n" not in message and sorted(os.listdir(os.path.join(workdir, "eval"))) == before


def test_a_typod_override_and_an_output_that_is_a_file_are_one_line(tmp_path):
    workdir = write_workdir(str(tmp_path / "run"))
    argv = ["evaluate", "--workdir", workdir, "--config.eval.batchsize=3"]
    with pytest.raises(SystemExit) as error:
        evaluate.define_flags(argv, flag_values=flags.FlagValues())
    assert error.value.code == (
        "flag error: the config has no key 'batchsize' (in a --config.KEY override); "
        'Did you mean "batch_size" instead of "batchsize"?'
    )
    a_file = tmp_path / "out.json"
    a_file.write_text("{}")
    with pytest.raises(SystemExit, match=f"--output {a_file} is an existing file; give a folder"):
        evaluate.check_output_dir(str(a_file))
    evaluate.check_output_dir(str(tmp_path / "new_folder"))


@pytest.mark.parametrize("content", ["", '{"seed": 0, "optim": {"lr"', "[1, 2]"])
def test_an_empty_or_cut_config_json_is_one_line_for_readers(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=r"config.json is unreadable|config.json holds list") as error:
        load_config(str(tmp_path))
    assert "\n" not in str(error.value)


def test_readers_leave_an_existing_world_vocabulary_alone(tmp_path, monkeypatch):
    path = tokenizer.write_world_vocab(str(tmp_path / "world_vocab.txt"))
    written = os.stat(path).st_mtime_ns

    def full_disk(source, target):
        raise OSError(errno.ENOSPC, "No space left on device", target)

    monkeypatch.setattr(tokenizer.os, "replace", full_disk)
    assert tokenizer.resolve_vocab("world", str(tmp_path)) == path
    assert os.stat(path).st_mtime_ns == written and os.listdir(tmp_path) == ["world_vocab.txt"]


# ------------------------------------------------------------------------------ checkpoints a reader cannot read


class Suspend:
    def __await__(self):
        yield


class ReaderLeftBehind(Exception):
    """Holds a suspended coroutine the way orbax's error chain does: collected once the error is dropped."""

    def __init__(self, reader):
        super().__init__("reader")
        self.reader = reader


# An orbax array reader: it fails again when collected, which Python reports as "Exception ignored in <coroutine>".
ORBAX_READER = {"Suspend": Suspend}
exec(
    compile(
        "async def read_array():\n    try:\n        await Suspend()\n    finally:\n        raise ValueError('index')\n",
        os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py"),
        "exec",
    ),
    ORBAX_READER,
)


@pytest.fixture
def checkpointer(tmp_path, monkeypatch):
    """A Checkpointer over fake steps 4, 8, 12 whose restore fails (loudly, as orbax does) for the steps in
    `checkpointer.damaged`."""
    directory = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        (directory / str(step)).mkdir(parents=True)
    result = Checkpointer(str(directory), keep=3, create=False)
    result.damaged = set()
    monkeypatch.setattr(result.manager, "all_steps", lambda: [4, 8, 12])

    def restore(step, abstract_state, data_iterator=None):
        if step in result.damaged:
            for _ in range(3):  # orbax and TensorStore report per array, with tracebacks
                try:
                    raise ValueError(f"array of step {step} unreadable")
                except ValueError:
                    absl_logging.error("restore failed", exc_info=True)
                    logging.getLogger("orbax").exception("restore failed")
            reader = ORBAX_READER["read_array"]()  # a reading coroutine left failing, as orbax leaves them
            reader.send(None)
            raise ValueError(f"step {step}: unreadable\nwith a long second line") from ReaderLeftBehind(reader)
        return f"state {step}"

    monkeypatch.setattr(result, "restore", restore)
    yield result
    result.close()


def test_each_skipped_damaged_checkpoint_is_one_line(checkpointer, caplog, monkeypatch):
    checkpointer.damaged = {12, 8}
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with caplog.at_level(logging.WARNING):
        assert checkpointer.restore_newest(None, set_aside=False) == ("state 4", 4)
    gc.collect()
    assert reported == []  # the readers orbax left failing are collected unreported
    messages = [record.getMessage() for record in caplog.records]
    assert all(record.exc_info is None for record in caplog.records)
    assert len(messages) == 2 and all("does not restore (ValueError: step" in m for m in messages)
    assert "\n" not in "".join(messages)


def test_a_step_that_does_not_exist_lists_those_that_do(checkpointer):
    with pytest.raises(CheckpointError, match=r"has no checkpoint step 7; the steps there are \[4, 8, 12\]"):
        checkpointer.restore_step(7, None)
    checkpointer.damaged = {8}
    with pytest.raises(CheckpointError, match=r"checkpoint step 8 in .* does not restore \(ValueError: step 8"):
        checkpointer.restore_step(8, None)
    assert checkpointer.restore_step(4, None) == "state 4"


def test_a_run_of_two_processes_resumed_by_one_is_told_how_many_it_needs(checkpointer):
    checkpointer.damaged = {4, 8, 12}
    data = os.path.join(checkpointer.directory, "12", "data")
    os.makedirs(data)
    for index in range(2):
        open(os.path.join(data, f"process_{index}-of-2.json"), "w").close()
    with pytest.raises(CheckpointError) as error:
        checkpointer.restore_newest(None, set_aside=False)
    message = str(error.value)
    assert "step 12 was saved by a job of 2 processes and this one has 1; resume it with 2 processes" in message
    assert "move that directory away" not in message


# ------------------------------------------------------------------------------ the trainer's records


def test_total_steps_below_the_checkpoints_step_is_refused_in_one_line():
    config = make_tiny_config(total_steps=10)
    with pytest.raises(ConfigError, match=r"total_steps=10 is below the step of W's newest checkpoint \(20\)"):
        loop.check_total_steps(config, "W", 20)
    loop.check_total_steps(config, "W", 10)
    loop.check_total_steps(config, "W", None)


def test_a_changed_config_whose_restore_fails_leaves_the_records_as_they_were(tmp_path, monkeypatch):
    """train.allow_config_change: the new config.json (and sharding.json) are written only once the checkpoints
    restored under it."""
    workdir = write_workdir(str(tmp_path), **{"model.embed_dim": 24})
    with open(os.path.join(workdir, "config.json")) as f:
        record = f.read()
    monkeypatch.setattr(checkpoint.Checkpointer, "latest_step", lambda self: 8)
    monkeypatch.setattr(loop.pipeline, "train_dataset", lambda *args: [])

    def restore_fails(*args):
        raise CheckpointError("no checkpoint in W restores")

    monkeypatch.setattr(loop, "initial_state", restore_fails)
    with pytest.raises(CheckpointError):
        loop.train(make_tiny_config(**{"train.allow_config_change": True}), workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == record
    assert not os.path.exists(os.path.join(workdir, "sharding.json"))


# ------------------------------------------------------------------------------ exports: whole or absent


def write_export(folder, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_failed_export_leaves_the_previous_one_whole_and_no_partial_files(tmp_path):
    target = tmp_path / "export"
    with paths.replaced_whole(str(target), "stats.json") as staging:
        write_export(pathlib.Path(staging), {"queries.jsonl": "old\n", "stats.json": "{}"})
    assert sorted(os.listdir(tmp_path)) == ["export"]
    with pytest.raises(OSError, match="No space left"):
        with paths.replaced_whole(str(target), "stats.json") as staging:
            write_export(pathlib.Path(staging), {"documents.jsonl": "new\n", "queries.jsonl": "new, cut"})
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(staging, "queries.jsonl"))
    assert sorted(os.listdir(tmp_path)) == ["export"] and sorted(os.listdir(target)) == ["queries.jsonl", "stats.json"]
    assert (target / "queries.jsonl").read_text() == "old\n"
    with paths.replaced_whole(str(target), "stats.json") as staging:  # a complete re-export replaces all of it
        write_export(pathlib.Path(staging), {"documents.jsonl": "new\n", "stats.json": "{}"})
    assert sorted(os.listdir(target)) == ["documents.jsonl", "stats.json"] and os.listdir(tmp_path) == ["export"]


def test_an_export_target_that_is_a_file_or_holds_other_files_is_refused_before_writing(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="--output .*a_file is an existing file; give a folder"):
        paths.check_output(str(tmp_path / "a_file"), "stats.json")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds files that are no previous export \\(it lacks stats.json\\)"):
        with paths.replaced_whole(str(tmp_path / "notes"), "stats.json"):
            pytest.fail("the body must not run")
    assert os.listdir(tmp_path / "notes") == ["mine.txt"] and sorted(os.listdir(tmp_path)) == ["a_file", "notes"]


@pytest.mark.parametrize("command", [export.main, to_pytorch.main], ids=["export", "to_pytorch"])
def test_exporting_a_workdir_without_a_checkpoint_is_one_line(tmp_path, command):
    workdir = write_workdir(str(tmp_path / "run"))
    with pytest.raises(SystemExit) as error:
        command(["--workdir", workdir, "--output", str(tmp_path / "out")])
    assert error.value.code == f"export error: no checkpoint under {workdir}/checkpoints; train first"
    assert not os.path.exists(tmp_path / "out")


def test_an_export_on_a_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "queries.jsonl"))

    monkeypatch.setattr(export, "export_workdir", full_disk)
    with pytest.raises(SystemExit) as error:
        export.main(["--workdir", str(tmp_path), "--output", str(tmp_path / "out")])
    assert str(error.value.code).startswith(f"export error: writing {tmp_path}/out/queries.jsonl failed: No space")
    assert "\n" not in str(error.value.code)


def test_a_full_disk_during_training_is_one_line_naming_the_path(monkeypatch):
    def full_disk(config, workdir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{workdir}/metrics.jsonl")

    monkeypatch.setattr(loop, "train", full_disk)
    with pytest.raises(SystemExit) as error:
        train_errors.train_or_exit(make_tiny_config(), "W")
    assert error.value.code == (
        "output error: writing W/metrics.jsonl failed: No space left on device; free space (or fix the permissions), "
        "then rerun the same command to resume from the last checkpoint"
    )
