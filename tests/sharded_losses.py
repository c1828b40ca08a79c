"""Subprocess helper for test_sharding: the tiny ELA step's losses on fixed batches under a given mesh, as JSON."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from ela_jax import parallel
from ela_jax.experiment import Experiment
from ela_jax.training.step import Vocabulary, make_train_step
from tests.conftest import make_tiny_config


def main(data: int, fsdp: int, tensor: int, workdir: str, steps: int = 4) -> None:
    config = make_tiny_config(
        **{"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor, "batch_size": 16, "objective.fine_weight": 0.5}
    )
    experiment = Experiment.build(config, workdir)
    optimizer, schedule = experiment.optimizer()
    factory = experiment.state_factory()
    state = factory.create(config.seed)
    step_fn = jax.jit(
        make_train_step(
            experiment.model, optimizer, schedule, config, Vocabulary.from_tokenizer(experiment.tokenizer, True)
        ),
        in_shardings=(factory.shardings, parallel.batch_sharding(experiment.mesh)),
        out_shardings=(factory.shardings, parallel.replicated(experiment.mesh)),
    )
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        batch = {
            "images": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
            "token_ids": rng.integers(5, experiment.tokenizer.vocab_size, (16, 16)).astype(np.int32),
            "mask": np.arange(16)[None, :] < rng.integers(3, 17, (16, 1)),
        }
        import flax.linen as nn

        with experiment.mesh, nn.logical_axis_rules(parallel.logical_rules(config.mesh)):
            state, metrics = step_fn(state, parallel.host_batch_to_global(batch, experiment.mesh))
        losses.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    report = parallel.sharding_report(experiment.mesh, factory.param_shardings, factory.abstract_params)
    print(json.dumps({"devices": jax.device_count(), "losses": losses, "sharding": report}))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]), sys.argv[4])
