"""One line format for everything a run prints to stderr: `2026-01-31 14:05:09 [ela_jax] message`, progress and
Python logging alike, so a log file reads in time order and says when each thing happened."""

from __future__ import annotations

import logging
import time

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def line(message: str, source: str = "ela_jax", level: str = "") -> str:
    """`message` stamped with the local time and its source; `level` ("warning", "error") leads the message."""
    return f"{time.strftime(TIME_FORMAT)} [{source}] {level + ': ' if level else ''}{message}"


class LineFormatter(logging.Formatter):
    """Python log records in the progress lines' format: the source is the logger's package (ela_jax, jax, absl,
    orbax, ...), and only warnings and errors say their level: an INFO record is a progress event, not a problem."""

    def format(self, record: logging.LogRecord) -> str:
        source = record.name.split(".")[0] if record.name != "root" else "python"
        level = "" if record.levelno < logging.WARNING else record.levelname.lower()
        text = line(record.getMessage(), source, level)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def use_line_format() -> None:
    """Formats every root handler's records as lines (absl's `app.run` installs one, whose default prefix carries a
    thread id and a source file), adding a stderr handler when there is none, and lets ela_jax's INFO events
    (resuming, towers loaded) through while other libraries stay at their own levels."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(LineFormatter())
    logging.getLogger("ela_jax").setLevel(logging.INFO)
