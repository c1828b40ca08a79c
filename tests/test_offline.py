"""tests/offline.sh, the wrapper `make test` runs the suite in: loopback is the only network inside it, and where a
machine allows no network namespace it runs the command as it is and says so."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(REPO, "tests", "offline.sh")
UNROUTABLE = ("192.0.2.1", 80)  # TEST-NET-1: never a real host


@pytest.mark.skipif(not os.environ.get("ELA_JAX_TESTS_OFFLINE"), reason="not run inside tests/offline.sh")
def test_inside_the_wrapper_only_loopback_is_reachable():
    with pytest.raises(OSError) as refused:
        socket.create_connection(UNROUTABLE, timeout=5)
    assert refused.value.errno == errno.ENETUNREACH, refused.value
    with socket.socket() as server:  # the emulators and JAX's coordinator listen here
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=5).close()


def test_without_a_namespace_the_wrapper_runs_the_command_and_says_so(tmp_path):
    tools = tmp_path / "bin"  # a PATH with a shell but neither unshare nor ip
    tools.mkdir()
    os.symlink("/bin/sh", tools / "sh")
    probe = "import os; print('offline=' + os.environ.get('ELA_JAX_TESTS_OFFLINE', 'unset'))"
    done = subprocess.run(
        ["/bin/sh", WRAPPER, sys.executable, "-c", probe],
        env={"PATH": str(tools)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "offline=unset"
    assert "no network namespace on this machine" in done.stderr
