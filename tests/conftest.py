"""Shared fixtures: offline environment, a private TFDS data dir, and a tiny config that trains in seconds."""

from __future__ import annotations

import os
import sys

import pytest

from ela_jax import host_allocator

host_allocator.configure()  # first: the settings must precede XLA:CPU's threads (ela_jax.host_allocator)

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


def make_tiny_config(**overrides):
    """ELA with every switch of the demo on a small world and a tiny model; `overrides` are dotted keys."""
    from ela_jax import config as config_lib

    config = config_lib.base_config()
    config.total_steps = 20
    config.batch_size = 32
    config.data.num_train = 256
    config.data.num_test = 64
    config.tokenizer.max_length = 16
    config.model = config_lib.model_config(
        image_size=32,
        patch_size=8,
        image=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
        text=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
        max_length=16,
        embed_dim=32,
        token_dim=16,
    )
    config.model.global_pool = "mean"
    config.objective.ela_weight = 1.0
    config.objective.mlm_weight = 0.5
    config.objective.flops_weight = 1e-3
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 5
    config.checkpoint.every_steps = 10
    config.log.every_steps = 5
    config.log.progress = False
    config.eval.batch_size = 64
    return set_keys(config, overrides)


def set_keys(config, overrides: dict):
    """Sets dotted keys ("objective.ela.beta") of a config in place and returns it."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


# A process that takes a workdir lock (argv: workdir, lock file name), says "held", and keeps it until killed.
HOLD_LOCK = """
import sys, time
from ela_jax.training.workdir_lock import WorkdirLock
assert WorkdirLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def train_command(workdir: str, *overrides: str) -> list[str]:
    """The training CLI on the demo config, as a user types it."""
    return [sys.executable, "-m", "ela_jax.train", "--config", "configs/demo.py", "--workdir", workdir, *overrides]


@pytest.fixture
def tiny_config():
    return make_tiny_config
