"""python -m tests.sharded_encoding DATA FSDP: encodes with the Encoder on a (DATA, FSDP, 1) mesh of fake CPU devices
and prints, as JSON, the largest difference from one unsharded apply of the same model (run under XLA_FLAGS)."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from ela_jax import parallel
from ela_jax.experiment import Experiment
from ela_jax.models.ela import ELAModel
from tests.helpers import make_tiny_config


def main(data: int, fsdp: int, workdir: str) -> None:
    config = make_tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": 1})
    experiment = Experiment.build(config, workdir)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)  # 11 rows: the last chunk is padded
    token_ids = rng.integers(5, experiment.tokenizer.vocab_size, (11, 16)).astype(np.int32)
    mask = np.arange(16)[None, :] < rng.integers(3, 17, 11)[:, None]
    params = jax.jit(lambda key: experiment.model.init(key, images[:1], token_ids[:1], mask[:1]))(jax.random.key(0))
    params = params["params"]
    reference_images = jax.jit(lambda p, x: experiment.model.apply({"params": p}, x, method=ELAModel.encode_image))(
        params, images
    )
    reference_texts = jax.jit(
        lambda p, ids, m: experiment.model.apply({"params": p}, ids, m, method=ELAModel.encode_text)
    )(params, token_ids, mask)
    sharded_params = jax.device_put(params, parallel.replicated(experiment.mesh))
    encoder = experiment.encoder(sharded_params, batch_size=4)
    encoded_images = encoder.encode_images(images, with_fine=True)
    encoded_texts = encoder.encode_tokens(token_ids, mask, with_fine=True)
    differences = {}
    for side, reference, encoded in (
        ("image", reference_images, encoded_images),
        ("text", reference_texts, encoded_texts),
    ):
        for key in ("global", "lexicon", "token_embeddings"):
            differences[f"{side}_{key}"] = float(np.max(np.abs(np.asarray(reference[key]) - encoded[key])))
        differences[f"{side}_mask_equal"] = bool(
            np.array_equal(np.asarray(reference["token_mask"]), encoded["token_mask"])
        )
    print(json.dumps({"devices": jax.device_count(), "batch_size": encoder.batch_size, "differences": differences}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
