"""Shared by the `python -m` entry points."""

from __future__ import annotations

import logging
import sys
import warnings

from absl import flags
from absl import logging as absl_logging

from ela_jax import logs


def quiet_libraries() -> None:
    """orbax and TFDS log every save and dataset load at INFO; keep warnings and errors, in timestamped lines."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logs.use_line_format()
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
    # The writes a failed save left pending are dropped at exit; Python warns about each unawaited coroutine.
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def _without_closed_event_loops(unraisablehook):
    """After a failed save, tensorstore's writer threads report to orbax's event loops, closed by then, once each;
    the failure itself is reported once, by the trainer."""

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            unraisablehook(unraisable)

    return hook


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (pass as `app.run(main, flags_parser=parse_flags)`) with every error in one line: a bad
    --config.KEY surfaces from ml_collections as an AttributeError under a long traceback, a missing config file as
    an OSError, and absl spreads a config file's own error (a traceback) over many lines."""
    try:
        remaining = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
            flags.FLAGS["config"].value.keys()  # a config file that failed to load says why only when first read
        return remaining
    except (AttributeError, KeyError) as error:  # an override naming a key the config does not have
        sys.exit(unknown_key_message(error))
    except (flags.Error, OSError) as error:
        lines = _lines(error)
        if any(line.startswith("Traceback") for line in lines):  # keep what was raised, not where
            lines = lines[-1:]
        sys.exit(f"flag error: {' '.join(lines)}")


def unknown_key_message(error: BaseException) -> str:
    """The one line for an override naming a key the config lacks (ml_collections' AttributeError or KeyError)."""
    key, *hint = [line.strip("'\"") for line in _lines(error)]
    return f"flag error: the config has no key {key!r} (in a --config.KEY override); {' '.join(hint)}".strip()


def _lines(error: BaseException) -> list[str]:
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
    return [line.strip() for line in text.splitlines() if line.strip()]
