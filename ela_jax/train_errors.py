"""What `python -m ela_jax.train` exits with: every error a user can act on, as one line and a non-zero status.
Apart from the command's flags, so that tests and wrappers can run it."""

from __future__ import annotations

import errno
import sys

from ela_jax import config as config_lib
from ela_jax import paths
from ela_jax.data.records import TooManySkipsError
from ela_jax.training import checkpoint, loop
from ela_jax.training.workdir_lock import WorkdirBusy


# A write the machine refused: said in one line naming the path (the trainer's records are replaced atomically).
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def train_or_exit(config, workdir: str) -> dict:
    """loop.train, with every error a user can act on turned into one line and a non-zero exit."""
    try:
        return loop.train(config, workdir)
    except config_lib.ConfigError as error:
        sys.exit(f"config error: {error}")
    except loop.TrainingDiverged as error:
        sys.exit(f"training stopped: {error}")
    except WorkdirBusy as error:
        sys.exit(f"workdir busy: {error}")
    except checkpoint.CheckpointError as error:
        sys.exit(f"checkpoint error: {error}")
    except TooManySkipsError as error:
        sys.exit(f"data error: {error}")
    except OSError as error:
        if paths.is_remote(workdir) and error.errno not in OUTPUT_ERRNOS:
            sys.exit(
                f"storage error: {workdir} could not be reached ({checkpoint.one_line(error)}); rerun the same "
                "command once it can to resume from the last checkpoint"
            )
        if error.errno not in OUTPUT_ERRNOS:
            raise
        sys.exit(
            f"output error: writing {error.filename or workdir} failed: {error.strerror}; free space (or fix the "
            "permissions), then rerun the same command to resume from the last checkpoint"
        )
