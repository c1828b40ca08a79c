"""An exclusive lock on a workdir for the life of a process: two runs never write one workdir.

The lock is `fcntl.flock` on a file in the workdir; the kernel drops it when its process exits or is killed, so a
lock left by a dead run never blocks a restart. The file also records who holds it (host, pid, start time, command),
which is what a refused second run prints. On a shared disk, flock works across hosts only where the file system
supports it (local disks, NFSv4, Lustre with flock enabled).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir."""


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
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        self.descriptor = descriptor
        return True

    def holder(self) -> str:
        """Who holds the lock, as its file records it."""
        try:
            with open(self.path) as f:
                info = json.load(f)
            return f"pid {info['pid']} on {info['host']} since {info['started']} ({info['command']})"
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
