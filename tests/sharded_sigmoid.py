"""Subprocess helper for test_sigmoid_loss (the device count is fixed per process): SigLIP's sigmoid loss, ring-
sharded over the batch axes of 8 fake CPU devices, against a dense float64 numpy reference. Prints, as JSON, per mesh
the largest relative error of the loss and of its gradients (images, captions, scale, bias) and whether the compiled
program (the ahead-of-time compiler's optimised HLO) holds any [B, B] array; the dense loss is compiled too, as a
control that the check sees one when it is there.

Run: XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharded_sigmoid
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from ela_jax import config as config_lib
from ela_jax import parallel
from ela_jax.training.contrastive import Contrastive
from ela_jax.training.step import sigmoid_logits

BATCH, WIDTH = 32, 8  # 4 rows per device; WIDTH differs from BATCH so a [B, B] shape is unambiguous
MESHES = {"data": (8, 1), "data_x_fsdp": (2, 4)}


def reference(image: np.ndarray, text: np.ndarray, scale: float, bias: float):
    """The loss and its gradients in float64: d loss / d logit_ij = -z_ij sigmoid(-z_ij logit_ij) / B."""
    labels = 2.0 * np.eye(BATCH) - 1.0
    similarity = image @ text.T
    logits = scale * similarity + bias
    loss = np.sum(np.logaddexp(0.0, -labels * logits)) / BATCH
    upstream = -labels / (1.0 + np.exp(labels * logits)) / BATCH
    return loss, (scale * upstream @ text, scale * upstream.T @ image, np.sum(upstream * similarity), upstream.sum())


def holds_batch_square(compiled_text: str) -> bool:
    return re.search(rf"\[{BATCH},{BATCH}\]", compiled_text) is not None


def main() -> None:
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    image, text = unit(rng.normal(size=(BATCH, WIDTH))), unit(rng.normal(size=(BATCH, WIDTH)))
    image[:, :] += 0.5 * text  # pairs that look alike, so positives and negatives both matter
    scale, bias = 10.0, -10.0
    expected_loss, expected_grads = reference(image, text, scale, bias)
    inputs = [jnp.asarray(x, jnp.float32) for x in (image, text, scale, bias)]
    result = {}
    for name, (data, fsdp) in MESHES.items():
        mesh_config = config_lib.base_config().mesh
        mesh_config.data, mesh_config.fsdp = data, fsdp
        contrastive = Contrastive(parallel.create_mesh(mesh_config))
        loss = lambda i, t, s, b: contrastive.sigmoid(sigmoid_logits, i, t, (s, b))  # noqa: E731
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        value, grads = step(*inputs)
        errors = [abs(float(value) - expected_loss) / abs(expected_loss)]
        for got, want in zip(grads, expected_grads):
            errors.append(float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want))))
        compiled = step.lower(*inputs).compile().as_text()
        result[name] = {"errors": errors, "holds_batch_square": holds_batch_square(compiled)}
    dense = jax.jit(jax.value_and_grad(lambda i, t, s, b: Contrastive(None).sigmoid(sigmoid_logits, i, t, (s, b))))
    result["dense_holds_batch_square"] = holds_batch_square(dense.lower(*inputs).compile().as_text())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
