"""Shared by the `python -m` entry points."""

from __future__ import annotations

import logging

from absl import logging as absl_logging


def quiet_libraries() -> None:
    """orbax and TFDS log every save and dataset load at INFO; keep warnings and errors."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tensorflow_datasets").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.WARNING)
    # TFDS warns on every load of a builder config it does not register; ours are generated on purpose.
    logging.getLogger("absl").addFilter(lambda record: "Using custom data configuration" not in record.getMessage())
