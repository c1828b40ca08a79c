"""ela_jax.host_allocator: XLA:CPU's per-step temporary buffer stays resident instead of being mapped afresh."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from ela_jax import host_allocator

# What XLA:CPU does each step, without JAX: a worker thread allocates a block larger than a glibc thread arena
# holds, writes it and frees it. Then the freed memory is handed back to the OS.
WORKER_ALLOCATIONS = """
import ctypes, json, resource, sys, threading
import ela_jax, ela_jax.host_allocator
exec(sys.argv[1])  # the import under test
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 128 * 2**20
faults = []

def allocate_write_free():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

def rss_mib():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024

worker = threading.Thread(target=allocate_write_free)
worker.start()
worker.join()
kept = rss_mib()
released = ela_jax.host_allocator.release_free_memory()
print(json.dumps({"faults": faults, "state": ela_jax.host_allocator.state(), "released": released,
                  "rss_drop_mib": kept - rss_mib()}))
"""


def worker_allocations(policy: str, import_line: str = "import ela_jax.parallel") -> dict:
    env = {**os.environ, host_allocator.POLICY_ENV: policy}
    command = [sys.executable, "-c", WORKER_ALLOCATIONS, import_line]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def transparent_huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.integration  # spawns a process
@pytest.mark.skipif(host_allocator.glibc() is None, reason="glibc's malloc only")
@pytest.mark.skipif(transparent_huge_pages_always(), reason="huge pages for every mapping: 4 KiB fault counts differ")
def test_a_worker_threads_large_block_is_reused_not_faulted_in_again_and_can_be_released():
    default, applied = worker_allocations("off"), worker_allocations("on")
    assert not default["state"]["applied"] and applied["state"]["applied"]
    pages = 128 * 2**20 // resource.getpagesize()
    # glibc's defaults map the block afresh each time: every page faults again (~32,768 for 128 MiB).
    assert min(default["faults"]) > pages // 2, default
    # Kept in the heap, only the first allocation faults its pages in.
    assert max(applied["faults"][1:]) < pages // 100, applied
    # Kept until released: the training loop releases what compiling freed.
    assert applied["released"] and applied["rss_drop_mib"] > 100, applied
    assert not default["released"], default


@pytest.mark.integration
@pytest.mark.skipif(host_allocator.glibc() is None, reason="glibc's malloc only")
@pytest.mark.skipif(transparent_huge_pages_always(), reason="huge pages for every mapping: 4 KiB fault counts differ")
def test_importing_the_pytorch_model_leaves_the_processs_malloc_alone():
    torch_side = worker_allocations("on", "import ela_jax.torch_model")
    assert not torch_side["state"]["applied"], torch_side
    pages = 128 * 2**20 // resource.getpagesize()
    assert min(torch_side["faults"]) > pages // 2, torch_side  # glibc's defaults: mapped afresh every time


@pytest.mark.parametrize(
    ("platforms", "plugins", "expected"),
    [("cpu", ("jax_cuda12_plugin",), True), ("cuda", (), False), ("", (), True), ("", ("libtpu",), False)],
)
def test_auto_applies_only_where_xla_cpu_computes(monkeypatch, platforms, plugins, expected):
    monkeypatch.setattr(host_allocator.importlib.util, "find_spec", lambda name: object() if name in plugins else None)
    assert host_allocator.xla_cpu_is_the_backend({"JAX_PLATFORMS": platforms}) is expected


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="ELA_JAX_HOST_MALLOC"):
        host_allocator.configure("sometimes")
