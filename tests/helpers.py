"""Helpers that tests (and their subprocess scripts) import: tiny configs, the training command line, and numpy
references. Fixtures stay in conftest.py, which pytest loads and no module imports."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from ela_jax import config as config_lib
from ela_jax.experiment import Experiment
from ela_jax.models.ela import ELAModel
from ela_jax.training.state import example_inputs


def make_tiny_config(**overrides):
    """ELA with every switch of the demo on a small world and a tiny model; `overrides` are dotted keys."""
    config = config_lib.base_config()
    config.total_steps = 20
    config.batch_size = 32
    config.data.num_train = 256
    config.data.num_test = 64
    config.tokenizer.max_length = 16
    config.model = config_lib.micro_model()
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


RESUME_STEPS, RESUME_EVERY = 12, 4


def resume_config(**overrides):
    """A run short enough to interrupt and resume at any step: a checkpoint every 4 steps, every step logged."""
    return make_tiny_config(
        **{"total_steps": RESUME_STEPS, "checkpoint.every_steps": RESUME_EVERY, "log.every_steps": 1, **overrides}
    )


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


def brute_force_top_k(queries: np.ndarray, documents: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 dot products, best first, ties to the lower document id: (scores [q, k], ids [q, k])."""
    scores = queries.astype(np.float64) @ documents.astype(np.float64).T  # [q, documents]
    ids = np.stack([np.lexsort((np.arange(len(documents)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, ids, axis=1), ids


def dyadic_sparse(rng: np.random.Generator, rows: int, vocab: int, density: float) -> np.ndarray:
    """Weights in quarters (exact in float32 and in any summation order), so ties are real ties."""
    weights = rng.integers(1, 8, (rows, vocab)) / 4.0
    return np.where(rng.random((rows, vocab)) < density, weights, 0.0).astype(np.float32)


def dense_ranks(scores: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference on the full matrix, one image and one caption at a time."""
    num_images, num_captions = scores.shape
    image_ranks = np.zeros(num_images, np.int64)
    for i in range(num_images):
        best = max(scores[i, c] for c in range(num_captions) if caption_image[c] == i)
        image_ranks[i] = sum(1 for c in range(num_captions) if caption_image[c] != i and scores[i, c] >= best)
    caption_ranks = np.zeros(num_captions, np.int64)
    for c in range(num_captions):
        own = scores[caption_image[c], c]
        caption_ranks[c] = sum(1 for i in range(num_images) if i != caption_image[c] and scores[i, c] >= own)
    return image_ranks, caption_ranks


def random_protocol(seed: int, num_images: int = 13, num_captions: int = 47):
    rng = np.random.default_rng(seed)
    caption_image = np.concatenate([np.arange(num_images), rng.integers(0, num_images, num_captions - num_images)])
    caption_image = rng.permutation(caption_image)  # every image has a caption; captions interleaved
    return rng, caption_image


def read_events(workdir: str) -> list:
    """Every event of workdir/tensorboard, file by file in creation order (TFRecord framing, tensorboardX's proto)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")), key=os.path.getmtime):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def tiny_model(vocab_multiple: int = 1, chunk: int = 0, tied: bool = True):
    """A one-layer ELA model over 50 words and 16-pixel images, for shape and padding checks."""
    model_config = config_lib.model_config(
        image_size=16,
        patch_size=4,
        image=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
        text=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
        max_length=8,
        embed_dim=16,
        token_dim=8,
    )
    model_config.vocab_size = 50
    model_config.vocab_multiple = vocab_multiple
    model_config.lexicon.chunk = chunk
    model_config.lexicon.tie_text_decoder = tied
    return ELAModel(model_config)


def model_inputs():
    """Two images, two captions (5 and 8 real tokens) for `tiny_model`."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    tokens = rng.integers(0, 50, (2, 8)).astype(np.int32)
    mask = np.arange(8)[None, :] < np.array([[5], [8]])
    return images, tokens, mask


def abstract_params(experiment: Experiment) -> dict:
    return nn.unbox(
        jax.eval_shape(experiment.model.init, jax.random.key(0), *example_inputs(experiment.config))["params"]
    )


def random_params(experiment: Experiment, seed: int = 1) -> dict:
    """Every leaf random, biases and log scales too (zeros at init would hide a misplaced bias); norms near 1."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.05, leaf.shape)
        is_norm_scale = jax.tree_util.keystr(path).endswith("['scale']")
        return np.asarray(noise + 1.0 if is_norm_scale else noise, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(experiment))


def save_workdir(experiment: Experiment, params_by_step: dict[int, dict]) -> None:
    """What a training run leaves behind: config.json and a checkpoint around each step's params."""
    with open(os.path.join(experiment.workdir, "config.json"), "w") as f:
        f.write(experiment.config.to_json_best_effort(indent=1))
    factory, checkpointer = experiment.state_factory(), experiment.checkpointer()
    for step, params in params_by_step.items():
        checkpointer.save(step, factory.from_params(params), None)
    checkpointer.close()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_report(module: str, *args, devices: int = 0, python: str = sys.executable, timeout: int = 600) -> dict:
    """Runs `python -m module args` from the repository, on `devices` fake CPU devices when given (the device count is
    fixed per process, so multi-device checks run in a helper process), and returns the JSON its last line prints."""
    env = {**os.environ, "PYTHONPATH": REPO}
    if devices:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    command = [python, "-m", module, *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_tiny_config_file(path, overrides: dict) -> str:
    """A config file for the training CLI (`--config path`): the shared tiny model with `overrides`."""
    with open(path, "w") as f:
        f.write("from tests.helpers import make_tiny_config\n\n\ndef get_config(arg=None):\n")
        f.write(f"    del arg\n    return make_tiny_config(**{overrides!r})\n")
    return str(path)
