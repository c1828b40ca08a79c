"""An exclusive lock on a workdir for the life of a process: two runs never write one workdir.

The lock is `fcntl.flock` on a file in the workdir; the kernel drops it when its process exits or is killed, so a
lock left by a dead run never blocks a restart. The file also records who holds it (host, pid, start time, command),
which is what a refused second run prints. On a shared disk, flock works across hosts only where the file system
supports it (local disks, NFSv4, Lustre with flock enabled).

On object storage (gs://, s3://) there is no flock: `ObjectLock` creates the lock object only if it is absent (the
store's create-only precondition) and a background thread refreshes its heartbeat; a lock whose heartbeat is older
than `stale_after` seconds is taken over, with one line saying so.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

import fsspec

from ela_jax import paths

log = logging.getLogger(__name__)


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir."""


def holder_record() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
    }


def describe(holder: dict) -> str:
    return f"pid {holder['pid']} on {holder['host']} since {holder['started']} ({holder['command']})"


def workdir_lock(workdir: str, name: str, stale_after: float):
    """The lock that fits `workdir`: flock on a disk, a heartbeat object on object storage."""
    return ObjectLock(workdir, name, stale_after) if paths.is_remote(workdir) else WorkdirLock(workdir, name)


class WorkdirLock:
    """Holds `workdir/name` exclusively from `acquire` until `release` (or the process's end)."""

    def __init__(self, workdir: str, name: str):
        self.path = os.path.join(workdir, name)
        self.descriptor = None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False while another one does."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        holder = holder_record()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        self.descriptor = descriptor
        return True

    def holder(self) -> str:
        """Who holds the lock, as its file records it."""
        try:
            with open(self.path) as f:
                return describe(json.load(f))
        except (OSError, ValueError, KeyError):
            return "another process (its record is being written)"

    def release(self) -> None:
        # The file stays: deleting it would let a third process lock a new file while a second still waits on this one.
        if self.descriptor is not None:
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            os.close(self.descriptor)
            self.descriptor = None

    def __enter__(self) -> "WorkdirLock":
        if not self.acquire():
            raise WorkdirBusy(
                f"{os.path.dirname(self.path)} is in use by {self.holder()}; wait for that run to end, stop it, or "
                "use another --workdir"
            )
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ObjectLock:
    """Holds `workdir/name` on object storage from `acquire` until `release`: the object records the holder, its
    `token` and a `heartbeat` (Unix seconds) that a daemon thread refreshes every `stale_after / 4` seconds."""

    def __init__(self, workdir: str, name: str, stale_after: float):
        self.path = f"{workdir.rstrip('/')}/{name}"
        self.stale_after = stale_after
        self.filesystem, self.key = fsspec.core.url_to_fs(self.path)
        self.record = {**holder_record(), "token": uuid.uuid4().hex}
        self.stop = threading.Event()
        self.thread = None

    def _payload(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": time.time()}).encode()

    def _read(self) -> dict | None:
        try:
            return json.loads(self.filesystem.cat_file(self.key))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # cut or foreign: treated as a lock of unknown age, never taken over

    def acquire(self) -> bool:
        """True when this process now holds the lock; False while a live run does."""
        if not self._create():
            held = self._read()
            age = time.time() - held["heartbeat"] if held and "heartbeat" in held else None
            if held is not None and (age is None or age < self.stale_after):
                return False
            if held is not None:
                log.warning(
                    "taking over the stale lock %s of %s (no heartbeat for %.0f s)", self.path, describe(held), age
                )
                # Two runs taking over at once could both delete and one create: stores enforce the create, and the
                # loser's heartbeat thread finds the other token and says so.
                self.filesystem.rm_file(self.key)
            if not self._create():
                return False
        self.thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self.thread.start()
        return True

    def _create(self) -> bool:
        try:
            self.filesystem.pipe_file(self.key, self._payload(), mode="create")
            return True
        except FileExistsError:
            return False

    def _beat(self) -> None:
        while not self.stop.wait(self.stale_after / 4):
            try:
                held = self._read()
                if not held or held.get("token") != self.record["token"]:
                    log.error(
                        "the lock %s is no longer this run's (%s); another run may write this workdir",
                        self.path,
                        describe(held) if held else "deleted",
                    )
                    return
                self.filesystem.pipe_file(self.key, self._payload())
            except Exception as error:  # noqa: BLE001 - a store outage; the next beat tries again
                log.warning("refreshing the lock %s failed (%s)", self.path, error)

    def holder(self) -> str:
        held = self._read()
        return describe(held) if held and "pid" in held else "another process (its record is unreadable)"

    def release(self) -> None:
        if self.thread is None:
            return
        self.stop.set()
        self.thread.join(timeout=1)  # a beat waiting on an unreachable store ends with the process (a daemon)
        self.thread = None
        try:
            held = self._read()
            if held and held.get("token") == self.record["token"]:
                self.filesystem.rm_file(self.key)
        except Exception as error:  # noqa: BLE001 - the run's own error, if any, is the one to report
            log.warning(
                "could not remove the lock %s (%s); the next run takes it over once it is %.0f min old",
                self.path,
                error,
                self.stale_after / 60,
            )

    def __enter__(self) -> "ObjectLock":
        if not self.acquire():
            raise WorkdirBusy(
                f"{self.path.rsplit('/', 1)[0]} is in use by {self.holder()}; wait for that run to end, stop it, use "
                f"another --workdir, or wait {self.stale_after / 60:.0f} min if that run died (its lock goes stale)"
            )
        return self

    def __exit__(self, *exc) -> None:
        self.release()
