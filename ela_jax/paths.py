"""Output locations: every output goes through the local file system (open, os.makedirs, matplotlib, tensorboardX),
so a remote URL such as gs://bucket/runs/x is refused up front instead of becoming a local folder named `gs:`;
records are replaced atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re

from ela_jax.config import ConfigError

# A URL scheme as etils.epath, orbax and TFDS read them: gs://, s3://, hf://, file://, ...
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def require_local(path: str, what: str) -> str:
    """`path` itself when it is a local path; ConfigError naming `what` (e.g. "--workdir") when it is a URL."""
    if _URL.match(str(path)):
        raise ConfigError(
            f"{what} {path} is a remote URL; outputs are written through the local file system, so mount the bucket "
            "(e.g. gcsfuse on /mnt/bucket) and pass the mounted path"
        )
    return path


def write_text(path: str, text: str) -> None:
    """Replaces `path` atomically: a process killed mid-write leaves the old file (or none), never a cut one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: str, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=1))


@contextlib.contextmanager
def held_exclusively(path: str):
    """Blocks until this process holds an exclusive `flock` on `path` (created if missing), for the `with` body.

    For one-time work that several processes may start together, such as preparing a dataset: the first prepares,
    the others wait and then find it prepared. The kernel drops the lock if its holder dies.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock
