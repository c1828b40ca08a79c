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


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One XLA compilation cache for the session (subprocesses too): many tests compile the same tiny train step, and
    compiling it costs far more CPU than running it. Private to the session, so no run reads another's programs."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cache

    path = str(tmp_path_factory.mktemp("xla_cache"))
    previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    cache.reset_cache()
    yield path
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
    cache.reset_cache()


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
