"""Batched, jitted encoding of images and captions into retrieval vectors (global, lexicon, tokens)."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from ela_jax import parallel
from ela_jax.models.ela import ELAModel

RETURNED = ("global", "lexicon")


class Encoder:
    """Encodes host arrays in fixed-size chunks (the last one padded, so each function compiles once)."""

    def __init__(self, model: ELAModel, params, mesh: Mesh, batch_size: int):
        self.model, self.params, self.mesh = model, params, mesh
        batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_size = -(-batch_size // batch_devices) * batch_devices

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def _images(self, params, images, with_tokens: bool):
        outputs = self.model.apply({"params": params}, images, with_tokens=False, method=ELAModel.encode_image)
        return self._select(outputs, with_tokens)

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _texts(self, params, token_ids, mask, with_tokens: bool):
        outputs = self.model.apply({"params": params}, token_ids, mask, with_tokens=False, method=ELAModel.encode_text)
        return self._select(outputs, with_tokens)

    @staticmethod
    def _select(outputs: dict, with_tokens: bool) -> dict:
        keep = RETURNED + (("hidden", "token_mask") if with_tokens else ())
        return {key: outputs[key] for key in keep}

    def _chunks(self, fn, arrays: tuple[np.ndarray, ...], with_tokens: bool) -> dict[str, np.ndarray]:
        total = len(arrays[0])
        results: dict[str, list] = {}
        for start in range(0, total, self.batch_size):
            chunk = [a[start : start + self.batch_size] for a in arrays]
            real = len(chunk[0])
            padded = [np.concatenate([c, np.repeat(c[-1:], self.batch_size - real, axis=0)]) for c in chunk]
            global_chunk = parallel.host_batch_to_global({str(i): p for i, p in enumerate(padded)}, self.mesh)
            with self.mesh:
                outputs = fn(self.params, *global_chunk.values(), with_tokens)
            for key, value in outputs.items():
                results.setdefault(key, []).append(np.asarray(jax.device_get(value))[:real])
        return {key: np.concatenate(values) for key, values in results.items()}

    def encode_images(self, images: np.ndarray, with_tokens: bool = False) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, 3] -> global [N, d], lexicon [N, V] (and hidden, token_mask)."""
        return self._chunks(self._images, (np.asarray(images, np.uint8),), with_tokens)

    def encode_tokens(self, token_ids: np.ndarray, mask: np.ndarray, with_tokens: bool = False) -> dict:
        return self._chunks(self._texts, (token_ids, mask), with_tokens)
