"""A log a person can read: every line stamped with its time and source, progress events not dressed as warnings,
and no download announcements for data generated on this machine."""

from __future__ import annotations

import io
import logging
import re

from absl import logging as absl_logging

from ela_jax import logs
from ela_jax.data import world_tfds
from ela_jax.training.progress import Progress
from tests.helpers import make_tiny_config

STAMPED = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def test_log_records_become_stamped_lines_that_name_their_source():
    formatter = logs.LineFormatter()
    resumed = formatter.format(record("ela_jax.training.loop", logging.INFO, "resuming from checkpoint step 30"))
    assert re.fullmatch(STAMPED + r" \[ela_jax\] resuming from checkpoint step 30", resumed)
    noise = formatter.format(record("jax._src.xla_bridge", logging.WARNING, "no GPU found"))
    assert re.fullmatch(STAMPED + r" \[jax\] warning: no GPU found", noise)


def test_the_entry_points_format_reaches_absl_handler_and_lets_ela_jax_events_through(monkeypatch, capsys):
    root, ela, absl_handler = logging.getLogger(), logging.getLogger("ela_jax"), absl_logging.get_absl_handler()
    monkeypatch.setattr(root, "handlers", [absl_handler])
    monkeypatch.setattr(root, "level", logging.WARNING)  # as absl_logging.set_verbosity(WARNING) leaves it
    monkeypatch.setattr(ela, "level", logging.NOTSET)
    monkeypatch.setattr(absl_handler.python_handler, "formatter", absl_handler.python_handler.formatter)
    capsys.readouterr()
    logs.use_line_format()
    logging.getLogger("ela_jax.convert.from_pytorch").info("image tower initialised from /ckpt")
    logging.getLogger("orbax.checkpoint").info("saved step 5")  # another library's INFO stays out
    lines = [line for line in capsys.readouterr().err.splitlines() if "Logging before flag parsing" not in line]
    assert len(lines) == 1 and re.fullmatch(STAMPED + r" \[ela_jax\] image tower initialised from /ckpt", lines[0])


def test_progress_lines_carry_the_time():
    stream = io.StringIO()
    progress = Progress(total_steps=4, enabled=True, bar=False, stream=stream)
    progress.phase("compiling the train step (from step 1)")
    assert re.fullmatch(STAMPED + r" \[ela_jax\] compiling the train step \(from step 1\)\n", stream.getvalue())


def test_preparing_a_generated_world_announces_no_download(tmp_path, capsys, caplog):
    config = make_tiny_config(**{"data.dir": str(tmp_path), "data.num_train": 4, "data.num_test": 2})
    with caplog.at_level(logging.INFO, logger="ela_jax"):
        builder = world_tfds.world_builder(config.data)
    assert capsys.readouterr().out == ""
    assert f"prepared ela_world in {builder.data_dir}" in caplog.messages
    assert builder.info.splits["train"].num_examples == 4
