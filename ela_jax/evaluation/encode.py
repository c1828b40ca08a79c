"""Batched, jitted encoding of images and captions into retrieval vectors (global, lexicon, tokens)."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ela_jax import parallel
from ela_jax.models.ela import ELAModel

RETURNED = ("global", "lexicon")
HIDDEN = ("hidden", "token_mask")  # the towers' final states (the public `tokens`)
FINE = ("token_embeddings", "token_mask")  # FILIP's normalised token embeddings, for the `fine` score


class Encoder:
    """Encodes host arrays in fixed-size chunks (the last one padded, so each function compiles once), each chunk
    sharded over the mesh's batch axes. Every process passes the same full arrays and gets the full results."""

    def __init__(self, model: ELAModel, params, mesh: Mesh, rules, batch_size: int):
        """`rules`: the logical axis rules of the config's mesh (parallel.logical_rules), for the models' activation
        constraints."""
        self.model, self.params, self.mesh, self.rules = model, params, mesh, rules
        batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_size = -(-batch_size // batch_devices) * batch_devices

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _images(self, params, images, keep: tuple[str, ...]):
        outputs = self.model.apply(
            {"params": params}, images, with_tokens="token_embeddings" in keep, method=ELAModel.encode_image
        )
        return {key: outputs[key] for key in keep}

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _texts(self, params, token_ids, mask, keep: tuple[str, ...]):
        outputs = self.model.apply(
            {"params": params}, token_ids, mask, with_tokens="token_embeddings" in keep, method=ELAModel.encode_text
        )
        return {key: outputs[key] for key in keep}

    def lower(self, abstract_params, image_size: int, text_length: int, keep: tuple[str, ...] = RETURNED) -> dict:
        """Both encoders lowered for one chunk, from shapes alone (params as ShapeDtypeStructs carrying their
        shardings): what ahead-of-time compilation compiles."""
        sharding = parallel.batch_sharding(self.mesh)
        chunk = lambda shape, dtype: jax.ShapeDtypeStruct((self.batch_size, *shape), dtype, sharding=sharding)  # noqa: E731
        with parallel.sharding_context(self.mesh, self.rules):
            images = Encoder._images.lower(self, abstract_params, chunk((image_size, image_size, 3), np.uint8), keep)
            token_ids, mask = chunk((text_length,), np.int32), chunk((text_length,), np.bool_)
            texts = Encoder._texts.lower(self, abstract_params, token_ids, mask, keep)
        return {"images": images, "texts": texts}

    @staticmethod
    def _keep(with_tokens: bool, with_fine: bool) -> tuple[str, ...]:
        extra = (HIDDEN if with_tokens else ()) + (FINE if with_fine else ())
        return RETURNED + tuple(dict.fromkeys(extra))

    def _global_chunk(self, host_chunk: np.ndarray) -> jax.Array:
        """A chunk every process holds in full -> one global array sharded over the batch axes; each device
        receives only its rows (works across hosts, where each host's devices take their slices)."""
        sharding = parallel.batch_sharding(self.mesh)
        return jax.make_array_from_callback(host_chunk.shape, sharding, lambda index: host_chunk[index])

    def _chunks(self, fn, arrays: tuple[np.ndarray, ...], keep: tuple[str, ...]) -> dict[str, np.ndarray]:
        total = len(arrays[0])
        results: dict[str, list] = {}
        for start in range(0, total, self.batch_size):
            chunk = [a[start : start + self.batch_size] for a in arrays]
            real = len(chunk[0])
            padded = [np.concatenate([c, np.repeat(c[-1:], self.batch_size - real, axis=0)]) for c in chunk]
            with parallel.sharding_context(self.mesh, self.rules):
                outputs = fn(self.params, *(self._global_chunk(p) for p in padded), keep)
            # Every process gets every row back (on one process this is a plain device_get).
            outputs = multihost_utils.process_allgather(outputs, tiled=True)
            for key, value in outputs.items():
                results.setdefault(key, []).append(np.asarray(value)[:real])
        return {key: np.concatenate(values) for key, values in results.items()}

    def encode_images(self, images: np.ndarray, with_tokens: bool = False, with_fine: bool = False) -> dict:
        """uint8 [N, H, W, 3] -> global [N, d], lexicon [N, V]; with_tokens adds hidden [N, 1+P, width] and
        token_mask [N, P]; with_fine adds token_embeddings [N, P, token_dim] and token_mask."""
        return self._chunks(self._images, (np.asarray(images, np.uint8),), self._keep(with_tokens, with_fine))

    def encode_tokens(
        self, token_ids: np.ndarray, mask: np.ndarray, with_tokens: bool = False, with_fine: bool = False
    ) -> dict:
        """token_ids, mask [N, L] -> the same keys as encode_images, token-level ones over the L positions."""
        return self._chunks(self._texts, (token_ids, mask), self._keep(with_tokens, with_fine))
