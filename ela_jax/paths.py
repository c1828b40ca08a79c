"""Output locations: every output goes through the local file system (open, os.makedirs, matplotlib, tensorboardX),
so a remote URL such as gs://bucket/runs/x is refused up front instead of becoming a local folder named `gs:`."""

from __future__ import annotations

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
