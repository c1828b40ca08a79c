"""glibc malloc settings that stop XLA:CPU from page-faulting its whole working set on every step.

XLA:CPU allocates each execution's temporary buffer (one block, often larger than 64 MiB for a train step) with `posix_memalign` from its worker threads and frees it when the step ends.
glibc serves a worker thread from a per-thread arena, and an arena cannot hold a block over 64 MiB
(HEAP_MAX_SIZE), so every step maps the block fresh, page-faults it in and unmaps it again. One arena (the main,
brk-grown heap), no mmap for large blocks and no trimming of the heap's free top keep the block resident across
steps (measurements: benchmarks/README.md).

The cost is that freed host memory stays in the process for reuse rather than returning to the OS (a caching
allocator, as PyTorch's and tcmalloc's are), and all threads share one arena's lock. Compiling leaves hundreds of
MiB of freed LLVM memory behind, so the training loop calls `release_free_memory` after its first step and after
each evaluation. The kept heap can still grow by a step's buffer when its free space is fragmented or two steps'
buffers overlap, so peak RSS can exceed glibc's defaults by about one step's buffers. `auto` applies the settings only where XLA:CPU is the compute backend: no GPU/TPU plugin is installed, or
`JAX_PLATFORMS=cpu`. On accelerator hosts, use tcmalloc if host allocation shows up in a profile
(MaxText's TPU setup preloads it).

The settings must be in place before JAX's CPU client starts its threads (a thread keeps the arena it first
allocated from), so the JAX side of the package (ela_jax.parallel, ela_jax.models, ela_jax.objectives) applies them
when imported; `import ela_jax` and `import ela_jax.torch_model` alone change nothing (a PyTorch process keeps its
own malloc). Importing them after JAX has run a computation leaves XLA:CPU's threads on their own arenas (and the
step as slow as before). `ELA_JAX_HOST_MALLOC`: `auto` (default), `on`, `off`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys

POLICY_ENV = "ELA_JAX_HOST_MALLOC"
POLICIES = ("auto", "on", "off")
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")

# mallopt parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int: the heap's free top is trimmed only beyond 2 GiB

SETTINGS = {
    "arena_max": (M_ARENA_MAX, 1),
    "mmap_max": (M_MMAP_MAX, 0),
    "trim_threshold": (M_TRIM_THRESHOLD, KEEP_FREED_BYTES),
}

_state: dict = {"applied": False, "reason": "not configured"}


def xla_cpu_is_the_backend(environ=os.environ) -> bool:
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def glibc():
    """The C library when it is glibc on Linux (the only one whose malloc these settings are for), else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def configure(policy: str | None = None) -> dict:
    """Apply the settings per `policy` (default: $ELA_JAX_HOST_MALLOC or `auto`); returns `state()`."""
    policy = (policy or os.environ.get(POLICY_ENV) or "auto").lower()
    if policy not in POLICIES:
        raise ValueError(f"{POLICY_ENV} must be one of {POLICIES}, got {policy!r}")
    if policy == "off":
        return _record(False, f"{POLICY_ENV}=off")
    if policy == "auto" and not xla_cpu_is_the_backend():
        return _record(False, "an accelerator backend is installed (auto applies only where XLA:CPU computes)")
    libc = glibc()
    if libc is None:
        return _record(False, "not glibc on Linux")
    failed = [name for name, (parameter, value) in SETTINGS.items() if libc.mallopt(parameter, value) != 1]
    if failed:
        return _record(False, f"mallopt refused {failed}")
    return _record(True, f"policy {policy}")


def release_free_memory() -> bool:
    """Returns the heap's free pages to the OS (glibc `malloc_trim`): for after a compile or an evaluation, whose
    freed memory the settings above would otherwise keep. Buffers still in use stay; a step's temporary buffer
    faults its pages in once more and then stays resident again. False where the settings are not applied."""
    if not _state["applied"]:
        return False
    return bool(glibc().malloc_trim(0))


def _record(applied: bool, reason: str) -> dict:
    _state.update(applied=applied, reason=reason)
    return state()


def state() -> dict:
    """What `configure` did, for logs and benchmark records."""
    settings = {name: value for name, (_, value) in SETTINGS.items()} if _state["applied"] else {}
    return {"applied": _state["applied"], "reason": _state["reason"], "settings": settings}
