"""Subprocess helper for test_rowwise_targets (the device count is fixed per process): ELA's expanded top-k targets
(`ObjectiveBuilder.targets`) and their top-k entries, computed row-wise per device (`Contrastive.rowwise`) over 8 fake
CPU devices and plainly on the same sharded inputs. Prints, as JSON, the largest difference between the two and
whether each compiled program (optimised HLO) holds a [global batch, vocab] array.

Run: XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharded_targets
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from configs import mesh_presets
from ela_jax import config as config_lib
from ela_jax import parallel
from ela_jax.training.contrastive import Contrastive
from ela_jax.training.step import ObjectiveBuilder, Vocabulary

BATCH, LENGTH, VOCAB, TOP_K = 64, 12, 1000, 8  # no other dimension is 64 or 1000: a [64, 1000] shape is the batch's


def targets_and_top_k(builder: ObjectiveBuilder, contrastive: Contrastive):
    def compute(token_ids, token_mask, expansion, beta):
        targets = contrastive.rowwise(builder.targets, (token_ids, token_mask, expansion), (beta,))
        return targets, contrastive.rowwise(lambda q: jax.lax.top_k(q, TOP_K), (targets,))

    return compute


def main() -> None:
    config = config_lib.base_config()
    config.objective.ela.update(top_k=TOP_K, target_form="sparse", source_top_k=16)
    mesh = parallel.create_mesh(mesh_presets.apply_overlays(config_lib.base_config(), "fsdp").mesh)
    vocabulary = Vocabulary(np.ones(VOCAB, np.float32), np.zeros(VOCAB, bool), 0)
    builder = ObjectiveBuilder(None, config, vocabulary)
    rng = np.random.default_rng(0)
    rows = NamedSharding(mesh, PartitionSpec(parallel.BATCH_AXES))
    inputs = [
        jax.device_put(rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32), rows),
        jax.device_put(rng.random((BATCH, LENGTH)) < 0.7, rows),
        jax.device_put(rng.random((BATCH, VOCAB)).astype(np.float32), rows),
        jnp.float32(0.3),
    ]
    report = {}
    results = {}
    for name, contrastive in (("rowwise", Contrastive(mesh)), ("plain", Contrastive(None))):
        compiled = jax.jit(targets_and_top_k(builder, contrastive)).lower(*inputs).compile()
        results[name] = jax.tree.leaves(compiled(*inputs))
        batch_by_vocab = re.search(rf"\[({BATCH},{VOCAB}|{VOCAB},{BATCH})\]", compiled.as_text())
        report[f"{name}_holds_batch_by_vocab"] = batch_by_vocab is not None
    report["largest_difference"] = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(results["rowwise"], results["plain"])
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
