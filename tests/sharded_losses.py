"""Subprocess helper for test_sharding (the device count is fixed per process): trains the tiny ELA step (with the
in-batch lex_contrastive ELA loss on top-k targets) for a few steps on fixed batches under a mesh preset and prints,
as JSON, the metrics of every step, the gradient of the loss with respect to the log logit scales at the first batch,
the sharding report and, with several devices, how far the row-sharded contrastive terms are from the dense ones (values
and gradients). Besides the presets, `data_fsdp_tp` is fsdp_tp with mesh.data = 2: on 8 devices a 2 x 2 x 2 mesh
that splits the batch over `data` and `fsdp` together.

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
from ela_jax import parallel
from ela_jax.experiment import Experiment
from ela_jax.training import step as step_lib
from ela_jax.training.contrastive import Contrastive
from tests.helpers import make_tiny_config

BATCH = 16
MESHES = {"single": ("", {}), "data_fsdp_tp": ("fsdp_tp", {"mesh.data": 2})}  # name: (overlay, more keys)


def fixed_batches(vocab_size: int, steps: int):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        yield {
            "images": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
            "token_ids": rng.integers(5, vocab_size, (BATCH, 16)).astype(np.int32),
            "mask": np.arange(16)[None, :] < rng.integers(3, 17, (BATCH, 1)),
        }


def train_losses(preset: str, workdir: str, steps: int) -> dict:
    config = make_tiny_config(
        **{
            "batch_size": BATCH,
            "objective.fine_weight": 0.5,
            "objective.ela.loss": "lex_contrastive",
            "objective.ela.top_k": 8,  # as configs/ela_b16.py: the targets travel as their top-k entries
            "model.lexicon.chunk": 16,
        }
    )
    overlay, keys = MESHES.get(preset, (preset, {}))
    mesh_presets.apply_overlays(config, overlay)
    for key, value in keys.items():
        config_lib.set_dotted(config, key, value)
    config.model.vocab_multiple = 128  # as fsdp_tp sets it: every mesh starts from the same (padded) parameters
    experiment = Experiment.build(config, workdir)
    config = experiment.config
    factory = experiment.state_factory()
    state = factory.create(config.seed)
    objective = step_lib.ObjectiveBuilder(experiment.model, config, experiment.vocabulary(), experiment.mesh)
    first = parallel.host_batch_to_global(next(fixed_batches(experiment.tokenizer.vocab_size, 1)), experiment.mesh)
    with parallel.sharding_context(experiment.mesh, parallel.logical_rules(config.mesh)):
        grads = jax.jit(jax.grad(lambda p: objective(p, state.teacher, first, state.step, jax.random.key(0))[0]))(
            state.params
        )
    log_scale_gradients = {name: float(grads[name]) for name in ("global_log_scale", "fine_log_scale")}
    step_fn = experiment.train_step(factory)
    history = []
    for batch in fixed_batches(experiment.tokenizer.vocab_size, steps):
        with parallel.sharding_context(experiment.mesh, parallel.logical_rules(config.mesh)):
            state, metrics = step_fn(state, parallel.host_batch_to_global(batch, experiment.mesh))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    report = parallel.sharding_report(experiment.mesh, factory.param_shardings, factory.abstract_params)
    return {"mesh": report["mesh"], "losses": history, "log_scale_gradients": log_scale_gradients, "sharding": report}


def contrastive_gaps(mesh) -> dict[str, float]:
    """Largest relative difference, sharded vs dense, of each contrastive term and of its input gradients."""
    rng = np.random.default_rng(1)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    image, text = unit(rng.normal(size=(BATCH, 8))), unit(rng.normal(size=(BATCH, 8)))
    image_tokens, text_tokens = unit(rng.normal(size=(BATCH, 5, 8))), unit(rng.normal(size=(BATCH, 6, 8)))
    text_mask = np.arange(6)[None, :] < rng.integers(1, 7, (BATCH, 1))
    vocab_logits, targets = rng.normal(size=(BATCH, 12)), rng.dirichlet(np.ones(12), BATCH)
    as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32 if x.dtype.kind == "f" else x.dtype), tree)  # noqa: E731
    top_k_targets = tuple(np.asarray(x) for x in jax.lax.top_k(jnp.asarray(targets), 4))  # (entries, word ids)
    cases = {
        "global": (step_lib.global_logits, image, text, 10.0),
        "fine": (step_lib.filip_logits, (image_tokens, np.ones((BATCH, 5), bool)), (text_tokens, text_mask), 10.0),
        "lex_contrastive": (step_lib.dense_lex_logits, vocab_logits, targets, 0.5),
        "sparse_lex_contrastive": (step_lib.sparse_lex_logits, vocab_logits, top_k_targets, 0.5),
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
