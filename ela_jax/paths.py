"""Output locations: a local path or a URL that etils.epath reads (gs://bucket/runs/x, s3://...). Local paths keep
the file system's fast calls; a URL goes through epath (fsspec), where each record is written as one object, which
object stores replace whole. Outputs that still need a local path (folders renamed into place) refuse a URL up front
instead of becoming a local folder named `gs:`."""

from __future__ import annotations

import contextlib
import fcntl
import glob as _glob
import io
import json
import os
import re
import shutil
import tempfile

import fsspec
from etils import epath

from ela_jax.config import ConfigError

# A URL scheme as etils.epath, orbax and TFDS read them: gs://, s3://, hf://, file://, ...
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# gcsfs's request methods, each wrapped by its retry decorator with a count fixed when gcsfs defines its class.
GCSFS_RETRIED_METHODS = ("_request", "_get_file_request", "_get_file_concurrent")


def limit_bucket_request_tries(tries: int) -> None:
    """Makes gcsfs try each request to a gs:// bucket at most `tries` times (its own 6 tries, with waits doubling from
    1 s, stall each read or write to a bucket that stays unreachable for about half a minute).

    gcsfs offers no setting for the count: its retry decorator takes it once, as the class is defined. So each of its
    request methods is wrapped again by that same decorator, with `tries`, around the undecorated method."""
    import gcsfs.core  # here, not at the top: gcsfs and its HTTP and auth libraries load only for runs using a bucket
    import gcsfs.retry

    filesystem_class = gcsfs.core.GCSFileSystem
    for name in GCSFS_RETRIED_METHODS:
        undecorated = getattr(filesystem_class, name).__wrapped__
        setattr(filesystem_class, name, gcsfs.retry.retry_request(retries=tries)(undecorated))
    filesystem_class.retries = tries


def is_remote(path: str) -> bool:
    """True for a URL (gs://, s3://, ...): written through epath rather than the local file system."""
    return bool(_URL.match(str(path)))


def absolute(path: str) -> str:
    """A local path made absolute; a URL as it is (os.path.abspath would turn gs://b into ./gs:/b)."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def makedirs(path: str) -> None:
    """Creates a local folder; object stores have no folders (a key's prefix needs no creating)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
    return epath.Path(path).exists() if is_remote(path) else os.path.exists(path)


def read_text(path: str) -> str:
    if is_remote(path):
        return epath.Path(path).read_text()
    with open(path) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Replaces `path` whole: one object on a store (which replaces it whole); on a disk, a file written aside and
    renamed into place."""
    if is_remote(path):
        epath.Path(path).write_bytes(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def copy(source: str, target: str) -> None:
    write_bytes(target, read_bytes(source))


def read_bytes(path: str) -> bytes:
    """The whole file; FileNotFoundError when there is none (an object store's "no such key" included)."""
    if is_remote(path):
        filesystem, key = fsspec.core.url_to_fs(path)
        return filesystem.cat_file(key)
    with open(path, "rb") as f:
        return f.read()


def is_file(path: str) -> bool:
    return epath.Path(path).is_file() if is_remote(path) else os.path.isfile(path)


def open_text(path: str):
    """`path` opened for reading UTF-8 text (bad bytes become U+FFFD), line ends as written, as `csv` wants them."""
    if is_remote(path):
        return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="replace", newline="")
    return open(path, newline="", encoding="utf-8", errors="replace")


def version(path: str) -> str:
    """A string that changes when the file at `path` is replaced: its size and modification time, or on object
    storage the object's generation (GCS) or ETag (S3), which change on every write even within the same second."""
    if not is_remote(path):
        status = os.stat(path)
        return f"{status.st_size}:{status.st_mtime_ns}"
    filesystem, key = fsspec.core.url_to_fs(path)
    info = filesystem.info(key)
    return f"{info.get('size')}:{info.get('generation') or info.get('ETag') or info.get('mtime')}"


def glob(folder: str, pattern: str) -> list[str]:
    """The paths in `folder` (local or URL) whose names match `pattern` (no `**`), sorted."""
    if is_remote(folder):
        return sorted(str(path) for path in epath.Path(folder).glob(pattern))
    return sorted(_glob.glob(os.path.join(folder, pattern)))


def open_binary(path: str):
    """`path` opened for reading bytes, seekable: a local file, or an object read in ranges on demand."""
    return epath.Path(path).open("rb") if is_remote(path) else open(path, "rb")


def size(path: str) -> int:
    return epath.Path(path).stat().length if is_remote(path) else os.path.getsize(path)


def read_range(path: str, offset: int, length: int) -> bytes:
    """`length` bytes of `path` from `offset` (before its end): one ranged request on object storage, one pread on a
    disk."""
    if is_remote(path):  # a direct ranged read: a file object would also start a read-ahead nobody waits for
        filesystem, key = fsspec.core.url_to_fs(path)
        return filesystem.cat_file(key, start=offset, end=offset + length)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return os.pread(descriptor, length, offset)
    finally:
        os.close(descriptor)


def require_local(path: str, what: str) -> str:
    """`path` itself when it is a local path; ConfigError naming `what` (e.g. "--output") when it is a URL."""
    if is_remote(path):
        raise ConfigError(
            f"{what} {path} is a remote URL; this output is written through the local file system, so mount the bucket "
            "(e.g. gcsfuse on /mnt/bucket) and pass the mounted path"
        )
    return path


def write_text(path: str, text: str) -> None:
    """Replaces `path` atomically: a process killed mid-write leaves the old file (or none), never a cut one."""
    write_bytes(path, text.encode())


def check_writable(path: str, what: str) -> None:
    """ConfigError, in one line, unless a file can be written at `path` (its folder is created): checked before long
    work whose result goes there."""
    if is_remote(path):
        _check_writable_object(path, what)
        return
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a folder; give the path of a file")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(
            f"{what} {path} cannot be written ({error.strerror or error}); give a writable path"
        ) from None


def _check_writable_object(path: str, what: str) -> None:
    probe = epath.Path(f"{path}.probe{os.getpid()}")
    try:
        probe.write_text("")
        probe.unlink()
    except Exception as error:  # noqa: BLE001 - each store client raises its own kinds
        raise ConfigError(f"{what} {path} cannot be written ({type(error).__name__}: {error}); give a writable path")


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


def check_output(target: str, marker: str, what: str = "--output") -> str:
    """The absolute path of `target` when an export may go there (see `replaced_whole`); ConfigError otherwise.
    Cheap: callers check before the work that fills the export."""
    target = os.path.abspath(require_local(target, what))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"{what} {target} is an existing file; give a folder (it is created if missing)")
    if os.path.isdir(target) and os.listdir(target) and not os.path.exists(os.path.join(target, marker)):
        raise ConfigError(
            f"{what} {target} holds files that are no previous export (it lacks {marker}); give a new or empty folder"
        )
    return target


def one_line_os_error(error: OSError, output: str) -> str:
    """A failed write (a full disk, no permission) as one line naming the path."""
    return (
        f"writing {error.filename or output} failed: {error.strerror or error}; nothing of it was kept (a previous "
        f"export in {output} is left as it was)"
    )


@contextlib.contextmanager
def replaced_whole(target: str, marker: str, what: str = "--output"):
    """Yields a new folder beside `target` to write an output into; once the body completes, the folder replaces
    `target` (a previous output there is removed), and if the body raises, the folder is removed. So `target` holds a
    complete output, the previous one, or nothing: never a mix or a cut file. A `target` that is a file, or a folder
    holding other files than a previous output (recognised by its `marker` file), is refused before anything is
    written."""
    target = check_output(target, marker, what)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        yield staging
        if os.path.isdir(target):
            previous = tempfile.mkdtemp(prefix=f".{name}.previous-", dir=parent)
            os.replace(target, os.path.join(previous, name))
            os.replace(staging, target)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
