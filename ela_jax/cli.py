"""Shared by the `python -m` entry points."""

from __future__ import annotations

import logging
import sys

from absl import logging as absl_logging


def quiet_libraries() -> None:
    """orbax and TFDS log every save and dataset load at INFO; keep warnings and errors."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tensorflow_datasets").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.WARNING)
    # TFDS warns on every load of a builder config it does not register; ours are generated on purpose.
    logging.getLogger("absl").addFilter(lambda record: "Using custom data configuration" not in record.getMessage())
    # A failed checkpoint write is reported by the trainer in one line (its path and OS error); orbax's own reports
    # repeat it from every writer thread, with tracebacks.
    logging.getLogger("absl").addFilter(
        lambda record: "/orbax/" not in record.pathname or record.levelno < logging.ERROR
    )
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = _without_closed_event_loops(sys.unraisablehook)


def _without_closed_event_loops(unraisablehook):
    """After a failed save, tensorstore's writer threads report to orbax's event loops, closed by then, once each;
    the failure itself is reported once, by the trainer."""

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            unraisablehook(unraisable)

    return hook
