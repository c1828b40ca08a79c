"""Shared fixtures: offline environment, a private TFDS data dir, and a tiny config that trains in seconds (helpers
that tests import live in tests/helpers.py)."""

from __future__ import annotations

import os

import pytest

from ela_jax import host_allocator

host_allocator.configure()  # first: the settings must precede XLA:CPU's threads (ela_jax.host_allocator)
from tests.helpers import make_tiny_config  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# No client may look for a cloud metadata server (google.auth reads this once, when first imported).
os.environ.setdefault("NO_GCE_CHECK", "true")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One XLA compilation cache for the session (subprocesses and pytest-xdist workers too): many tests compile the
    same tiny train step, and compiling it costs far more CPU than running it. Private to the session, so no run
    reads another's programs. A size limit turns on JAX's file lock around each entry, so a process never reads a
    program another is still writing."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cache

    path = session_root(tmp_path_factory) / "xla_cache"
    path.mkdir(exist_ok=True)
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": 0.2,
        "jax_compilation_cache_max_size": 8 << 30,
    }
    previous = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    cache.reset_cache()
    yield str(path)
    for name, value in previous.items():
        jax.config.update(name, value)
        os.environ.pop(name.upper(), None)
    cache.reset_cache()


def session_root(tmp_path_factory):
    """The session's temporary root, which pytest-xdist workers share (each worker's own base is one level down)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory):
    """Datasets are prepared inside the test session, never read from a user's cache."""
    path = str(tmp_path_factory.mktemp("tfds"))
    previous = os.environ.get("ELA_JAX_DATA_DIR")
    os.environ["ELA_JAX_DATA_DIR"] = path
    yield path
    if previous is None:
        os.environ.pop("ELA_JAX_DATA_DIR", None)
    else:
        os.environ["ELA_JAX_DATA_DIR"] = previous


@pytest.fixture
def tiny_config():
    return make_tiny_config
