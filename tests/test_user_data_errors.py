"""Mistakes a user makes with their own data and config: caption files with the wrong field names or header, the
demo's world evaluator on real data, and a learning-rate schedule that silently changes; each says so in one line."""

from __future__ import annotations

import json
import logging
import os

import pytest

from ela_jax import validation
from ela_jax.config import ConfigError
from ela_jax.data import records
from ela_jax.errors import TooManySkipsError
from ela_jax.training import loop, restarts
from tests import data_fixtures as fixtures
from tests.helpers import make_tiny_config


def folder_config(manual_dir: str, **overrides):
    return make_tiny_config(**{"data.name": "folder", "data.manual_dir": manual_dir, "batch_size": 4, **overrides})


def test_a_small_caption_file_with_the_wrong_field_names_stops_naming_found_and_expected(tmp_path, caplog):
    """30 of 40 lines say "img" instead of "image": the rate check (judged from 100 records on) would train on the
    other 10; the file stops with one line naming the fields it has and the ones it needs."""
    path = str(tmp_path / "captions.jsonl")
    rows = [{"image" if i < 10 else "img": f"{i}.jpg", "caption": f"photo {i}"} for i in range(40)]
    fixtures.write_jsonl(path, rows)
    skips = records.SkipCounter("folder annotations", 0.05)
    with caplog.at_level(logging.WARNING), pytest.raises(TooManySkipsError) as raised:
        records.read_caption_files([path], str(tmp_path), skips)
    message = str(raised.value)
    assert "\n" not in message
    assert "30 of 40 lines skipped (no_image: no 'image' field)" in message
    assert "the lines have the fields ['caption', 'image', 'img'], expected 'image' with 'caption' or 'captions'" in (
        message
    )
    assert "captions.jsonl:11 (no_image: no 'image' field)" in caplog.text  # the skip line names the field


def test_a_few_bad_lines_of_a_small_file_are_skipped_not_fatal(tmp_path):
    path = str(tmp_path / "captions.jsonl")
    fixtures.write_jsonl(path, [{"image": f"{i}.jpg", "caption": "" if i < 2 else f"photo {i}"} for i in range(5)])
    skips = records.SkipCounter("folder annotations", 0.05)
    assert [r.key for r in records.read_caption_files([path], str(tmp_path), skips)] == ["2.jpg", "3.jpg", "4.jpg"]
    assert skips.reasons == {"no_caption": 2}


def test_a_csv_with_the_wrong_header_is_one_line_and_writes_nothing(tmp_path):
    fixtures.write_file(str(tmp_path / "data" / "a.jpg"), fixtures.jpeg_bytes(1))
    with open(tmp_path / "data" / "captions.csv", "w") as f:
        f.write("file,text\na.jpg,photo 1\n")
    workdir = str(tmp_path / "run")
    with pytest.raises(ConfigError) as raised:
        loop.train(folder_config(str(tmp_path / "data")), workdir)
    message = str(raised.value)
    assert "\n" not in message and "captions.csv needs a header line naming the columns image,caption" in message
    assert "got ['file', 'text']" in message
    assert not os.path.exists(workdir)  # no config.json, checkpoints/ or train.lock left behind


def test_the_real_data_config_validates_on_a_folder_and_runs_retrieval_only(tmp_path):
    from configs import real

    fixtures.write_file(str(tmp_path / "a.jpg"), fixtures.jpeg_bytes(1))
    fixtures.write_jsonl(str(tmp_path / "captions.jsonl"), [{"image": "a.jpg", "caption": "a photo"}])
    config = real.get_config()
    with pytest.raises(ConfigError, match="data source 'folder' needs data.manual_dir"):
        validation.validate(config, num_devices=1)
    config.data.manual_dir = str(tmp_path)
    validation.validate(config, num_devices=1)
    assert [entry.type for entry in config.evals.values()] == ["retrieval"]
    assert config.tokenizer.vocab == "bert-base-uncased" and config.model.image.image_size == config.data.image_size


def write_config_json(workdir: str, total_steps: int) -> None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"total_steps": total_steps}, f)


def test_a_schedule_cut_short_or_moved_by_a_resume_is_said_in_one_line(tmp_path):
    workdir = str(tmp_path)
    config = make_tiny_config(**{"total_steps": 40, "optim.warmup_steps": 5, "optim.lr": 1e-3})
    write_config_json(workdir, 40)
    assert restarts.schedule_changes(config, workdir, resumed_step=20) == []
    assert restarts.schedule_changes(config, workdir, resumed_step=None) == []

    short = make_tiny_config(**{"total_steps": 3, "optim.warmup_steps": 5})
    (change,) = restarts.schedule_changes(short, workdir, resumed_step=None)
    assert change.startswith("total_steps 3 is below optim.warmup_steps 5: the learning rate warms up over all 3")

    longer = make_tiny_config(**{"total_steps": 80, "optim.warmup_steps": 5, "optim.lr": 1e-3})
    (change,) = restarts.schedule_changes(longer, workdir, resumed_step=20)
    assert "\n" not in change
    assert f"resuming step 20 with total_steps 80 where {workdir}/config.json has 40" in change
    # Cosine from step 5: 1e-3 * (1 + cos(pi * 15 / 75)) / 2 under 80 steps, 1e-3 * (1 + cos(pi * 15 / 35)) / 2 under 40.
    assert "the learning-rate schedule changes (at step 20 it is 0.000905, was 0.000611)" in change
    assert change.endswith("pass --config.total_steps=40 to keep it")
