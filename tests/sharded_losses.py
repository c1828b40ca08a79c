"""Subprocess helper for test_sharding (the device count is fixed per process): trains the tiny ELA step for a few
steps on fixed batches under a mesh preset and prints, as JSON, the metrics of every step, the sharding report and,
with several devices, how far the row-sharded contrastive terms are from the dense ones (values and gradients).

Run: XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharded_losses fsdp_tp WORKDIR [STEPS]
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import mesh_presets
from ela_jax import config as config_lib
from ela_jax import objectives, parallel
from ela_jax.experiment import Experiment
from ela_jax.training import step as step_lib
from ela_jax.training.contrastive import Contrastive
from tests.helpers import make_tiny_config

BATCH = 16


def fixed_batches(vocab_size: int, steps: int):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        yield {
            "images": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
            "token_ids": rng.integers(5, vocab_size, (BATCH, 16)).astype(np.int32),
            "mask": np.arange(16)[None, :] < rng.integers(3, 17, (BATCH, 1)),
        }


def train_losses(preset: str, workdir: str, steps: int) -> dict:
    config = make_tiny_config(**{"batch_size": BATCH, "objective.fine_weight": 0.5, "model.lexicon.chunk": 16})
    mesh_presets.apply_overlays(config, "" if preset == "single" else preset)
    config.model.vocab_multiple = 128  # as fsdp_tp sets it: every mesh starts from the same (padded) parameters
    experiment = Experiment.build(config, workdir)
    config = experiment.config
    factory = experiment.state_factory()
    state = factory.create(config.seed)
    step_fn = experiment.train_step(factory)
    history = []
    for batch in fixed_batches(experiment.tokenizer.vocab_size, steps):
        with parallel.sharding_context(experiment.mesh, parallel.logical_rules(config.mesh)):
            state, metrics = step_fn(state, parallel.host_batch_to_global(batch, experiment.mesh))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    report = parallel.sharding_report(experiment.mesh, factory.param_shardings, factory.abstract_params)
    return {"mesh": report["mesh"], "losses": history, "sharding": report}


def contrastive_gaps(mesh) -> dict[str, float]:
    """Largest relative difference, sharded vs dense, of each contrastive term and of its input gradients."""
    rng = np.random.default_rng(1)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    image, text = unit(rng.normal(size=(BATCH, 8))), unit(rng.normal(size=(BATCH, 8)))
    image_tokens, text_tokens = unit(rng.normal(size=(BATCH, 5, 8))), unit(rng.normal(size=(BATCH, 6, 8)))
    text_mask = np.arange(6)[None, :] < rng.integers(1, 7, (BATCH, 1))
    vocab_logits, targets = rng.normal(size=(BATCH, 12)), rng.dirichlet(np.ones(12), BATCH)
    as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32 if x.dtype != bool else bool), tree)  # noqa: E731
    lex = lambda z, q, tau: (objectives.lex_contrastive_logits(z, q, tau),) * 2  # noqa: E731
    cases = {
        "global": (step_lib.global_logits, image, text, 10.0),
        "fine": (step_lib.filip_logits, (image_tokens, np.ones((BATCH, 5), bool)), (text_tokens, text_mask), 10.0),
        "lex_contrastive": (lex, vocab_logits, targets, 0.5),
    }
    gaps = {}
    for name, (similarity, rows, columns, shared) in cases.items():
        rows, columns = as_f32(rows), as_f32(columns)
        results = []
        for contrastive in (Contrastive(None), Contrastive(mesh)):
            loss = lambda r, c, contrastive=contrastive: contrastive(similarity, r, c, jnp.float32(shared))  # noqa: E731
            value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), allow_int=True))(rows, columns)
            results.append([value] + [g for g in jax.tree.leaves(grads) if g.dtype == jnp.float32])
        gaps[name] = max(
            float(np.max(np.abs(np.asarray(s) - np.asarray(d))) / (np.max(np.abs(np.asarray(d))) + 1e-12))
            for d, s in zip(*results)
        )
    return gaps


def main(preset: str, workdir: str, steps: int) -> None:
    result = {"devices": jax.device_count(), **train_losses(preset, workdir, steps)}
    if jax.device_count() > 1:
        mesh = parallel.create_mesh(mesh_presets.apply_overlays(config_lib.base_config(), "dp").mesh)
        result["contrastive_gaps"] = contrastive_gaps(mesh)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20)
