"""A fused Pallas kernel for the max-pooled lexicon logits: per batch row and vocabulary tile, it multiplies token
tiles by the kernel tile, adds the bias and keeps a running max and argmax over tokens on chip, so the
[batch, tokens, vocab] logits are never written to memory.

Compiled on GPU (Triton) and TPU (Mosaic); on CPU it runs only in Pallas's interpret mode (tests).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from ela_jax.errors import ConfigError

COMPILED_BACKENDS = ("gpu", "tpu")
LOWEST = float(jnp.finfo(jnp.float32).min)
# The backend a program is lowered for when it is not this process's own (a TPU slice compiled ahead of time here).
_TARGET_BACKEND = contextvars.ContextVar("pallas_target_backend", default=None)


@contextlib.contextmanager
def lowering_for(backend: str):
    """Within it, the kernel is traced for `backend` (e.g. "tpu" from a CPU host compiling for a TPU topology)."""
    token = _TARGET_BACKEND.set(backend)
    try:
        yield
    finally:
        _TARGET_BACKEND.reset(token)


def lowering_backend() -> str:
    return _TARGET_BACKEND.get() or jax.default_backend()


def check_backend(interpret: bool) -> None:
    """Raises ConfigError when the kernel cannot run compiled where it is lowered and interpret mode was not asked
    for."""
    backend = lowering_backend()
    if not interpret and backend not in COMPILED_BACKENDS:
        raise ConfigError(
            f"model.lexicon.impl='pallas' needs a GPU or TPU backend, got {backend!r}; use impl='argmax' "
            "(model.lexicon.pallas_interpret=True runs the kernel slowly in interpret mode, for tests)"
        )


def _pad_axis(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
    padding = [(0, 0)] * x.ndim
    padding[axis] = (0, -x.shape[axis] % multiple)
    return jnp.pad(x, padding, constant_values=value)


def pallas_max_argmax(
    features: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    token_mask: jax.Array,
    interpret: bool = False,
    block_tokens: int = 32,
    block_vocab: int = 128,
    block_width: int = 128,
) -> tuple[jax.Array, jax.Array]:
    """features [b, len, w], kernel [w, V], bias [V], token_mask [b, len] -> (max [b, V] float32, argmax [b, V]
    int32) of the masked logits over tokens; ties and all-masked rows go to the lowest token index, as jnp.argmax.

    Blocks are powers of two (Triton needs them); padded tokens are masked, padded words and widths are zeros.
    """
    check_backend(interpret)
    batch, _, _ = features.shape
    vocab = kernel.shape[1]
    features = _pad_axis(_pad_axis(features, 1, block_tokens), 2, block_width)
    kernel = _pad_axis(_pad_axis(kernel, 0, block_width), 1, block_vocab)
    bias = _pad_axis(bias.astype(jnp.float32), 0, block_vocab)[None, :]  # [1, V']
    mask = _pad_axis(token_mask.astype(jnp.int32), 1, block_tokens)[:, :, None]  # [b, len', 1]
    _, tokens, width = features.shape
    padded_vocab = kernel.shape[1]

    def fused(features_ref, kernel_ref, bias_ref, mask_ref, max_ref, argmax_ref):
        def token_tile(tile, carry):
            best, winner = carry  # [1, block_vocab]
            rows = pl.ds(pl.multiple_of(tile * block_tokens, block_tokens), block_tokens)

            def width_tile(part, acc):
                cols = pl.ds(pl.multiple_of(part * block_width, block_width), block_width)
                return acc + jnp.dot(
                    features_ref[0, rows, cols], kernel_ref[cols, :], preferred_element_type=jnp.float32
                )

            logits = jax.lax.fori_loop(
                0, width // block_width, width_tile, jnp.zeros((block_tokens, block_vocab), jnp.float32)
            )
            real = mask_ref[0, rows, :] > 0  # [block_tokens, 1]
            logits = jnp.where(real, logits + bias_ref[...], LOWEST)
            tile_best = jnp.max(logits, axis=0, keepdims=True)
            index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0) + tile * block_tokens
            tile_winner = jnp.min(jnp.where(logits == tile_best, index, tokens), axis=0, keepdims=True)
            better = tile_best > best  # strict: an earlier tile keeps a tie (lowest token index wins)
            return jnp.where(better, tile_best, best), jnp.where(better, tile_winner, winner)

        start = (jnp.full((1, block_vocab), LOWEST, jnp.float32), jnp.zeros((1, block_vocab), jnp.int32))
        best, winner = jax.lax.fori_loop(0, tokens // block_tokens, token_tile, start)
        max_ref[0] = best
        argmax_ref[0] = winner

    best, winner = pl.pallas_call(
        fused,
        grid=(batch, padded_vocab // block_vocab),
        in_specs=[
            pl.BlockSpec((1, tokens, width), lambda b, v: (b, 0, 0)),
            pl.BlockSpec((width, block_vocab), lambda b, v: (0, v)),
            pl.BlockSpec((1, block_vocab), lambda b, v: (0, v)),
            pl.BlockSpec((1, tokens, 1), lambda b, v: (b, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((1, 1, block_vocab), lambda b, v: (b, 0, v)),
            pl.BlockSpec((1, 1, block_vocab), lambda b, v: (b, 0, v)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, 1, padded_vocab), jnp.float32),
            jax.ShapeDtypeStruct((batch, 1, padded_vocab), jnp.int32),
        ],
        interpret=interpret,
        # Triton on GPU: Mosaic GPU (JAX's default there) stages whole blocks in shared memory, and a batch row's
        # features do not fit.
        compiler_params=pl_triton.CompilerParams() if lowering_backend() == "gpu" and not interpret else None,
    )(features, kernel, bias, mask)
    return best[:, 0, :vocab], winner[:, 0, :vocab]
