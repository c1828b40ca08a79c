"""Runs one command as N JAX processes on this machine's CPU, joined by JAX's distributed runtime (gloo collectives).

    python -m launch.local --processes 2 --devices-per-process 2 -- \
        python -m ela_jax.train --config configs/demo.py --workdir W

Each process gets JAX_COORDINATOR_ADDRESS (a free local port), JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_PLATFORMS=cpu
and a fake device count in XLA_FLAGS, which `ela_jax.parallel.initialize_distributed` turns into
`jax.distributed.initialize`. Output lines are prefixed with the process id; SIGINT/SIGTERM are forwarded to every
process (the trainer then saves a checkpoint at a step all processes agree on); when one process fails, the others are
stopped and the launcher exits with the failed process's status. When the launcher itself dies (killed, even by
SIGKILL), the kernel sends every process SIGTERM (Linux's parent-death signal), so no worker runs on unseen.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# How long stopped processes get to exit after SIGTERM before they are killed.
GRACE_SECONDS = 10.0
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A port no one listens on now; the coordinator (process 0) binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(base: dict[str, str], process_id: int, processes: int, devices: int, port: int) -> dict[str, str]:
    """The environment of process `process_id`: the job's coordinates and `devices` CPU devices."""
    xla_flags = [flag for flag in base.get("XLA_FLAGS", "").split() if not flag.startswith(DEVICE_COUNT_FLAG)]
    return {
        **base,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join([*xla_flags, f"{DEVICE_COUNT_FLAG}={devices}"]),
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(processes),
        "JAX_PROCESS_ID": str(process_id),
        "PYTHONUNBUFFERED": "1",  # lines reach the prefixed stream as they are printed
    }


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def die_with(launcher_pid: int):
    """A Popen preexec_fn: the child gets SIGTERM when the launcher dies, and ends at once if it already has. None
    off Linux, which has no parent-death signal."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launcher_pid:  # the launcher died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def stream_lines(process: subprocess.Popen, prefix: str, lock: threading.Lock) -> None:
    for line in process.stdout:
        with lock:
            sys.stdout.write(f"{prefix}{line}")
            sys.stdout.flush()


class LocalJob:
    """N processes of one command; each is the leader of its own process group, so signals reach its children."""

    def __init__(self, command: list[str], processes: int, devices_per_process: int):
        port = free_port()
        self.processes = [
            subprocess.Popen(
                command,
                env=process_env(dict(os.environ), index, processes, devices_per_process, port),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher only, which forwards it once
                preexec_fn=die_with(os.getpid()),  # before any thread of the launcher starts
            )
            for index in range(processes)
        ]
        lock = threading.Lock()
        width = len(str(processes - 1))
        self.streams = [
            threading.Thread(target=stream_lines, args=(p, f"[{i:>{width}}] ", lock), daemon=True)
            for i, p in enumerate(self.processes)
        ]
        for stream in self.streams:
            stream.start()

    def signal_all(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signum)
                except ProcessLookupError:
                    pass  # exited between poll and kill

    def stop(self) -> None:
        """SIGTERM to every process still running, SIGKILL to those still there after the grace period."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes):
            time.sleep(0.1)
        self.signal_all(signal.SIGKILL)

    def wait(self) -> int:
        """0 when every process succeeds; otherwise the first failure's status (the rest are stopped)."""
        while True:
            codes = [p.poll() for p in self.processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                print(f"[launch] process {index} exited with status {code}; stopping the others", file=sys.stderr)
                self.stop()
                return self._finish(code)
            if all(code == 0 for code in codes):
                return self._finish(0)
            time.sleep(0.1)

    def _finish(self, code: int) -> int:
        for process in self.processes:
            process.wait()
        for stream in self.streams:
            stream.join(timeout=5.0)
        # A process killed by signal N reports -N; a shell reports 128 + N.
        return code if code >= 0 else 128 - code


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launch.local", description=__doc__.split("\n")[0], usage="%(prog)s [options] -- COMMAND ..."
    )
    parser.add_argument("--processes", type=int, default=2, help="number of JAX processes (default 2)")
    parser.add_argument("--devices-per-process", type=int, default=1, help="fake CPU devices per process (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command every process runs, after --")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given; put it after --, e.g. -- python -m ela_jax.train --config ...")
    if args.processes < 1 or args.devices_per_process < 1:
        parser.error(
            f"--processes and --devices-per-process must be >= 1, got {args.processes} and {args.devices_per_process}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    job = LocalJob(args.command, args.processes, args.devices_per_process)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda received, frame: job.signal_all(received))
    return job.wait()


if __name__ == "__main__":
    sys.exit(main())
