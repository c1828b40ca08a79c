"""Subprocess helper for test_lexicon_impls (the device count is fixed per process): the max-pooled lexicon logits
of every impl on an fsdp_tp mesh (batch over fsdp, vocabulary over tensor), compared with the single-device dense
pool. Prints, as JSON, each impl's largest difference (values and gradients), its kernel gradient's sharding and the
shapes of the features and kernel that each Pallas call of its traced step receives (one device's share on a mesh).

Run: XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharded_lexicon
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ela_jax import config as config_lib
from configs import mesh_presets
from ela_jax import parallel
from ela_jax.models import lexicon

CHUNK = 64  # 4 strided chunks of the 256 words, each split over the 2 `tensor` devices


def objective(features, kernel, bias, mask, weights, impl: str):
    pooled = lexicon.pool_vocab_logits(features, kernel, bias, mask, ("max",), CHUNK, impl, interpret=True)["max"]
    return jnp.sum(weights * jnp.tanh(pooled))


def pallas_operand_shapes(jaxpr) -> list[list[list[int]]]:
    """[features shape, kernel shape] of every pallas_call in `jaxpr` and the jaxprs nested in its equations."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            shapes.append([list(var.aval.shape) for var in eqn.invars[:2]])
        for param in eqn.params.values():
            nested = getattr(param, "jaxpr", param)  # a ClosedJaxpr holds its Jaxpr
            if hasattr(nested, "eqns"):
                shapes += pallas_operand_shapes(nested)
    return shapes


def main() -> None:
    config = config_lib.base_config()
    mesh_presets.apply_overlays(config, "fsdp_tp")
    mesh = parallel.create_mesh(config.mesh)
    rules = parallel.logical_rules(config.mesh)
    rng = np.random.default_rng(0)
    batch, tokens, width, vocab = 8, 5, 8, 256
    inputs = (
        rng.normal(size=(batch, tokens, width)).astype(np.float32),
        rng.normal(size=(width, vocab)).astype(np.float32),
        rng.normal(size=(vocab,)).astype(np.float32),
        np.arange(tokens)[None, :] < rng.integers(1, tokens + 1, (batch, 1)),
        rng.normal(size=(batch, vocab)).astype(np.float32),
    )
    specs = [("fsdp",), ("fsdp", "tensor"), ("tensor",), ("fsdp",), ("fsdp", "tensor")]
    shardings = tuple(NamedSharding(mesh, PartitionSpec(*spec)) for spec in specs)
    gradient = jax.value_and_grad(objective, argnums=(0, 1, 2))
    expected = jax.tree.leaves(gradient(*inputs, "dense"))
    report = {}
    for impl in ("dense", "chunked", "argmax", "pallas"):
        sharded = tuple(jax.device_put(x, s) for x, s in zip(inputs, shardings))
        with parallel.sharding_context(mesh, rules):
            value, grads = jax.jit(gradient, static_argnums=5)(*sharded, impl)
            traced = jax.make_jaxpr(gradient, static_argnums=5)(*sharded, impl)
        errors = [float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(jax.tree.leaves((value, grads)), expected)]
        spec = grads[1].sharding.spec
        report[impl] = {
            "max_error": max(errors),
            "kernel_grad_spec": [spec[i] if i < len(spec) else None for i in (0, 1)],
            "pallas_operand_shapes": pallas_operand_shapes(traced.jaxpr),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
