"""Lexicon heads (BERT-MLM shaped) and the saturated, masked max-pooling into |V|-dimensional lexicon vectors.

The head's per-token vocabulary logits are [batch, tokens, vocab]: 1.5 GB in float32 for 64 images x 196 patches x
30522 words. The objectives only need them pooled over tokens ([batch, vocab]), so `LexiconHead.pooled` can compute
the pools in vocabulary chunks under `jax.checkpoint`: forward and backward then hold one [batch, tokens, chunk] slab
at a time instead of the whole tensor. For the max pool (the lexicon itself), the "argmax" and "pallas" impls
keep only each word's max and winning token, and the backward pass reads features and kernel at the winners instead
of recomputing any logits.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, PartitionSpec

from ela_jax.models import layers
from ela_jax.models.lexicon_kernel import pallas_max_argmax

TOKEN_POOLS = ("max", "mean", "logsumexp")
ROWS_BUDGET_BYTES = 2**28  # the argmax backward's gathered rows per scan step on an accelerator
# The logit of a word kept out of the lexicon: saturates to 0, and has no mass in a softmax or BCE over the vocabulary
# (finite, so a zero target times its log-probability stays 0).
MASKED_LOGIT = -1e4


def padded_size(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple` (sharding the vocabulary axis needs divisible sizes)."""
    multiple = max(int(multiple), 1)
    return -(-size // multiple) * multiple


class LexiconHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder to the vocabulary (+ bias); the decoder may be tied to embeddings.

    Parameters cover `padded_vocab_size` words; every output is cut back to the real `vocab_size`, so padding words
    never reach a loss, a lexicon vector or an exported weight. The `masked_ids` words (the tokenizer's special
    tokens) get MASKED_LOGIT in every output: they are no word of any image or caption.
    """

    width: int
    vocab_size: int
    padded_vocab_size: int
    layer_norm_eps: float
    gelu_approximate: bool
    tied: bool
    chunk: int = 0  # vocabulary words per chunk in `pooled`; 0 computes the dense logits
    impl: str = "chunked"  # how `pooled` computes the pools: one of config.LEXICON_IMPLS (see pool_vocab_logits)
    interpret: bool = False  # impl "pallas" in Pallas's interpret mode (CPU tests)
    dtype: layers.Dtype = jnp.float32
    masked_ids: tuple[int, ...] = ()

    def setup(self):
        self.transform = layers.TokenDense(
            self.width,
            dtype=self.dtype,
            kernel_init=layers.partitioned(layers.default_kernel_init, "embed", "mlp"),
            bias_init=layers.partitioned(nn.initializers.zeros, "mlp"),
        )
        self.transform_norm = layers.layer_norm(self.layer_norm_eps, self.dtype, "transform_norm")
        self.decoder_bias = self.param(
            "decoder_bias", layers.partitioned(nn.initializers.zeros, "vocab"), (self.padded_vocab_size,)
        )
        if not self.tied:
            # Laid out as the tied decoder (the word embeddings transposed): width split over FSDP like every
            # kernel's embed axis, so FSDP holds 1/n of it; vocabulary over tensor.
            self.decoder_kernel = self.param(
                "decoder_kernel",
                layers.partitioned(layers.default_kernel_init, "embed", "vocab"),
                (self.width, self.padded_vocab_size),
            )

    def _features(self, hidden: jax.Array) -> jax.Array:
        transformed = layers.gelu(self.transform(hidden), self.gelu_approximate)
        return self.transform_norm(transformed)

    def _kernel(self, tied_embedding: jax.Array | None) -> jax.Array:
        """[width, padded vocab]: the decoder's own kernel, or the transposed (padded) word embeddings."""
        if self.tied:
            if tied_embedding is None:
                raise ValueError("a tied lexicon head needs the word embedding matrix")
            return tied_embedding.T
        return self.decoder_kernel

    def __call__(self, hidden: jax.Array, tied_embedding: jax.Array | None = None) -> jax.Array:
        """hidden [batch, len, width] -> vocabulary logits [batch, len, vocab] in float32 (dense)."""
        kernel = self._kernel(tied_embedding)
        # Accumulated in float32: a bfloat16 sum over the width would round every logit (lexicon, ELA, MLM).
        logits = layers.token_matmul(self._features(hidden), kernel.astype(self.dtype), jnp.float32)
        logits = logits + self.decoder_bias
        logits = nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
        return mask_words(logits[..., : self.vocab_size], self.masked_ids)

    def pooled(
        self,
        hidden: jax.Array,
        token_mask: jax.Array,
        pools: tuple[str, ...],
        tied_embedding: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Token-pooled vocabulary logits {pool: [batch, vocab]} over tokens with token_mask True, without the
        [batch, len, vocab] tensor when `chunk` is set (same values and gradients as pooling the dense logits)."""
        features = self._features(hidden)
        kernel = self._kernel(tied_embedding).astype(self.dtype)
        pooled = pool_vocab_logits(
            features, kernel, self.decoder_bias, token_mask, pools, self.chunk, self.impl, self.interpret
        )
        return {name: mask_words(value[:, : self.vocab_size], self.masked_ids) for name, value in pooled.items()}

    def token_cross_entropy(
        self, hidden: jax.Array, labels: jax.Array, tied_embedding: jax.Array | None = None
    ) -> jax.Array:
        """hidden [batch, len, width], labels [batch, len] -> float32 [batch, len]: the cross-entropy of each label
        under the head's vocabulary logits (as `__call__` gives them), in vocabulary chunks when `chunk` is set."""
        chunk = 0 if self.impl == "dense" else self.chunk
        kernel = self._kernel(tied_embedding).astype(self.dtype)
        return vocab_cross_entropy(
            self._features(hidden), kernel, self.decoder_bias, labels, self.vocab_size, self.masked_ids, chunk
        )


def mask_words(logits: jax.Array, word_ids: tuple[int, ...]) -> jax.Array:
    """logits [..., vocab] with the columns of word_ids set to MASKED_LOGIT (no gradient reaches them)."""
    if not word_ids:
        return logits
    masked = np.zeros(logits.shape[-1], bool)
    masked[list(word_ids)] = True
    return jnp.where(masked, MASKED_LOGIT, logits)


def pool_tokens(logits: jax.Array, token_mask: jax.Array, how: str) -> jax.Array:
    """[batch, len, vocab] -> [batch, vocab] over tokens with token_mask True; 'max' lets each word pick its token.

    An all-masked row pools to the float32 minimum under 'max', whose saturated lexicon weight is 0.
    """
    mask = token_mask[..., None]
    if how == "max":
        return jnp.max(jnp.where(mask, logits, jnp.finfo(logits.dtype).min), axis=1)
    count = jnp.maximum(jnp.sum(mask, axis=1).astype(logits.dtype), 1.0)
    if how == "mean":
        return jnp.sum(jnp.where(mask, logits, 0.0), axis=1) / count
    if how == "logsumexp":
        lowest = jnp.finfo(logits.dtype).min
        return jax.nn.logsumexp(jnp.where(mask, logits, lowest), axis=1) - jnp.log(count)
    raise ValueError(f"unknown token pooling {how!r}; use one of {TOKEN_POOLS}")


def pool_vocab_logits(
    features: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    token_mask: jax.Array,
    pools: tuple[str, ...],
    chunk: int,
    impl: str = "chunked",
    interpret: bool = False,
) -> dict[str, jax.Array]:
    """pool_tokens(features @ kernel + bias) for each pool; features [b, len, w], kernel [w, V], bias [V].

    impl "dense" computes the whole [b, len, V] logits; "chunked" (dense when chunk is 0) computes them in vocabulary
    chunks, each under `jax.checkpoint`; "argmax" and "pallas" compute the 'max' pool through `max_pool_vocab_logits`
    (other pools keep the chunked path).
    """
    if impl == "dense":
        chunk = 0
    pooled = {}
    if impl in ("argmax", "pallas") and "max" in pools:
        pooled["max"] = max_pool_vocab_logits(features, kernel, bias, token_mask, chunk, impl == "pallas", interpret)
    rest = tuple(how for how in pools if how not in pooled)
    if rest:
        pooled.update(_chunked_pools(features, kernel, bias, token_mask, rest, chunk))
    return {how: pooled[how] for how in pools}


def _chunked_pools(features, kernel, bias, token_mask, pools, chunk) -> dict[str, jax.Array]:
    """With 0 < chunk < V the vocabulary is split into ceil(V / chunk) strided chunks (see `to_strided_chunks`),
    mapped sequentially, each under `jax.checkpoint` so the backward pass recomputes its logits instead of storing
    them."""

    def pool_chunk(chunk_kernel: jax.Array, chunk_bias: jax.Array) -> tuple[jax.Array, ...]:
        logits = _logits(features, chunk_kernel, chunk_bias)
        return tuple(pool_tokens(logits, token_mask, how) for how in pools)

    vocab = kernel.shape[1]
    if chunk <= 0 or chunk >= vocab:
        return dict(zip(pools, pool_chunk(kernel, bias)))
    num_chunks = -(-vocab // chunk)
    chunks = (to_strided_chunks(kernel, num_chunks), to_strided_chunks(bias, num_chunks))
    pooled = jax.lax.map(lambda args: jax.checkpoint(pool_chunk)(*args), chunks)
    return {how: from_strided_chunks(value, vocab) for how, value in zip(pools, pooled)}


def _logits(features: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """[b, len, w] x [w, V] + [V] -> float32 [b, len, V], accumulated in float32."""
    logits = layers.token_matmul(features, kernel, preferred_element_type=jnp.float32) + bias
    return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))


def vocab_cross_entropy(
    features: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    vocab_size: int,
    masked_ids: tuple[int, ...] = (),
    chunk: int = 0,
) -> jax.Array:
    """-log softmax(mask_words((features @ kernel + bias)[..., :vocab_size], masked_ids))[labels]: [b, len].

    features [b, len, w], kernel [w, V'], bias [V'] (V' >= vocab_size, the padded vocabulary). With 0 < chunk < V'
    the logsumexp runs over strided vocabulary chunks (see `to_strided_chunks`), each under `jax.checkpoint`, so
    neither pass holds the [b, len, V'] logits: MLM scores every caption position, and those logits would be the
    text step's largest array.
    """
    padded = kernel.shape[1]
    num_chunks = -(-padded // chunk) if 0 < chunk < padded else 1
    words = -(-padded // num_chunks)
    word_ids = np.arange(words * num_chunks).reshape(words, num_chunks).T  # chunk i: words i, i + n, ...
    real, masked = word_ids < vocab_size, np.isin(word_ids, list(masked_ids))

    def chunk_terms(chunk_kernel, chunk_bias, chunk_ids, chunk_real, chunk_masked):
        logits = jnp.where(chunk_masked, MASKED_LOGIT, _logits(features, chunk_kernel, chunk_bias))
        # The shift keeps exp() finite; logsumexp's value does not depend on it, so it carries no gradient.
        shift = jax.lax.stop_gradient(jnp.max(jnp.where(chunk_real, logits, jnp.finfo(jnp.float32).min), axis=-1))
        total = jnp.sum(jnp.where(chunk_real, jnp.exp(logits - shift[..., None]), 0.0), axis=-1)
        label_logit = jnp.sum(jnp.where(labels[..., None] == chunk_ids, logits, 0.0), axis=-1)
        return shift, total, label_logit

    chunks = (to_strided_chunks(kernel, num_chunks), to_strided_chunks(bias, num_chunks), word_ids, real, masked)
    shifts, totals, label_logits = jax.lax.map(lambda args: jax.checkpoint(chunk_terms)(*args), chunks)
    shift = jnp.max(shifts, axis=0)
    log_normaliser = shift + jnp.log(jnp.sum(totals * jnp.exp(shifts - shift), axis=0))
    return log_normaliser - jnp.sum(label_logits, axis=0)


def to_strided_chunks(x: jax.Array, num_chunks: int) -> jax.Array:
    """[..., V] -> [num_chunks, ..., ceil(V / num_chunks)], zero-padded: chunk i holds words i, i + n, i + 2n, ...
    A vocabulary axis sharded in contiguous blocks then stays sharded inside every chunk."""
    vocab = x.shape[-1]
    chunk = -(-vocab // num_chunks)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, chunk * num_chunks - vocab)])
    # word v = j * num_chunks + i sits at [..., j, i]: chunk i is the strided set {i, i + num_chunks, ...}.
    return jnp.moveaxis(x.reshape(*x.shape[:-1], chunk, num_chunks), -1, 0)


def from_strided_chunks(x: jax.Array, vocab: int) -> jax.Array:
    """Inverse of `to_strided_chunks`: [n, ..., chunk] -> [..., vocab] with word j * n + i back at its index."""
    x = jnp.moveaxis(x, 0, -1)
    return x.reshape(*x.shape[:-2], -1)[..., :vocab]


def max_pool_vocab_logits(
    features: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    token_mask: jax.Array,
    chunk: int,
    fused: bool = False,
    interpret: bool = False,
) -> jax.Array:
    """pool_tokens(features @ kernel + bias, token_mask, 'max') [b, V] without storing any [b, len, V] logits.

    The forward keeps only each word's max and winning token (its argmax): `chunk`-word strided slices of the
    vocabulary under XLA (0: all words at once), or the fused Pallas kernel when `fused`. The gradient of a max flows
    only into its winning token, so the backward pass reads features and kernel at the winners instead of recomputing
    logits. Ties go to the lowest token index (jnp.argmax's rule), where `jax.grad` of the dense max would split the
    gradient evenly; wherever the max is unique both agree. A row without real tokens gets zero gradient.
    """
    split = _MeshSplit.current(features.shape[0], kernel.shape) if fused else None
    return _max_pool(features, kernel, bias, token_mask, chunk, fused, interpret, split)


class _MeshSplit(NamedTuple):
    """How the fused impl splits its work over the mesh: XLA cannot partition a Mosaic (or Triton) call, so on a mesh
    the kernel and its backward run per device inside `shard_map`s, each device on its own batch rows and its own
    shard of the vocabulary. The decoder kernel enters whole over the batch axes, all-gathered as XLA gathers every
    FSDP weight: gathering the features instead would grow with the batch, and splitting the width would need every
    logit summed across devices before the max."""

    mesh: AbstractMesh
    batch_axes: tuple[str, ...]  # the activations' batch axes
    vocab_axes: tuple[str, ...]  # the vocabulary's axes
    width_axes: tuple[str, ...]  # the batch axes again when they divide the width: the kernel gradient's shards

    @classmethod
    def current(cls, batch: int, kernel_shape: tuple[int, int]) -> _MeshSplit | None:
        """The split under the current mesh and logical rules; None where nothing is split (one device, no mesh)."""
        mesh = jax.sharding.get_abstract_mesh()
        batch_axes = _divisible_mesh_axes(mesh, "act_batch", batch)
        vocab_axes = _divisible_mesh_axes(mesh, "act_vocab", kernel_shape[1])
        if not batch_axes and not vocab_axes:
            return None
        divides = kernel_shape[0] % math.prod(mesh.shape[axis] for axis in batch_axes) == 0
        return cls(mesh, batch_axes, vocab_axes, batch_axes if divides else ())

    def spec(self, *dims: str | None) -> PartitionSpec:
        """PartitionSpec from dims named "batch", "vocab", "width" or None (whole)."""
        axes = {"batch": self.batch_axes, "vocab": self.vocab_axes, "width": self.width_axes}
        return PartitionSpec(*(axes[dim] or None if dim else None for dim in dims))

    def per_device(self, function, in_specs: tuple, out_specs):
        # No replication checks: Pallas's interpret mode (the CPU tests) does not type them, and nothing inside is
        # differentiated (the custom VJP sums what it must itself).
        return jax.shard_map(function, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _divisible_mesh_axes(mesh: AbstractMesh, logical_name: str, size: int) -> tuple[str, ...]:
    """The mesh's axes larger than 1 that the logical rules map `logical_name` to, or () when there are none or they
    do not divide `size` (the value then stays whole on every device)."""
    axes = nn.logical_to_mesh_axes((logical_name,))[0]
    axes = (axes,) if isinstance(axes, str) else axes or ()
    axes = tuple(axis for axis in axes if mesh.shape.get(axis, 1) > 1)
    return axes if size % math.prod(mesh.shape[axis] for axis in axes) == 0 else ()


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _max_pool(features, kernel, bias, token_mask, chunk, fused, interpret, split):
    return _max_pool_forward(features, kernel, bias, token_mask, chunk, fused, interpret, split)[0]


def _max_pool_forward(features, kernel, bias, token_mask, chunk, fused, interpret, split):
    if fused:
        max_argmax = functools.partial(pallas_max_argmax, interpret=interpret)
        if split is not None:
            rows, vocab = split.spec("batch"), split.spec(None, "vocab")
            pools = split.spec("batch", "vocab")
            max_argmax = split.per_device(max_argmax, (rows, vocab, split.spec("vocab"), rows), (pools, pools))
        best, winner = max_argmax(features, kernel, bias, token_mask)
    else:
        best, winner = _xla_max_argmax(features, kernel, bias, token_mask, chunk)
    # The gradient only counts when the winner is a real token (an all-masked row "wins" at a padding token).
    real = jnp.take_along_axis(token_mask, winner, axis=1)
    return best, (features, kernel, winner, real)


def _xla_max_argmax(features, kernel, bias, token_mask, chunk) -> tuple[jax.Array, jax.Array]:
    def max_argmax(chunk_kernel, chunk_bias):
        logits = _logits(features, chunk_kernel, chunk_bias)
        logits = jnp.where(token_mask[..., None], logits, jnp.finfo(jnp.float32).min)
        return jnp.max(logits, axis=1), jnp.argmax(logits, axis=1).astype(jnp.int32)

    vocab = kernel.shape[1]
    num_chunks = -(-vocab // chunk) if 0 < chunk < vocab else 1
    chunks = (to_strided_chunks(kernel, num_chunks), to_strided_chunks(bias, num_chunks))
    best, winner = jax.lax.map(lambda args: max_argmax(*args), chunks)
    return from_strided_chunks(best, vocab), from_strided_chunks(winner, vocab)


def _max_pool_backward(chunk, fused, interpret, split, residuals, grad):
    """d max / d (features, kernel, bias) from the winners: per batch row, kernel column v gains grad[v] * the winning
    token's features, and the winning token's features gain grad[v] * kernel column v (a segment sum)."""
    del fused, interpret
    features, kernel, winner, real = residuals
    grad = jnp.where(real, grad, 0.0)
    if split is None:
        grad_features, grad_kernel = _winner_backward(features, kernel, grad, winner, chunk)
    else:

        def sum_over_batch_shards(grad_kernel):
            # In float32, as XLA sums a partitioned matmul's partial products; where the width divides, each device
            # keeps its FSDP share (a reduce-scatter, as for every FSDP weight's gradient). Chunk by chunk, so no
            # device holds a whole-vocabulary float32 gradient.
            if split.width_axes:
                return jax.lax.psum_scatter(grad_kernel, split.width_axes, scatter_dimension=0, tiled=True)
            return jax.lax.psum(grad_kernel, split.batch_axes) if split.batch_axes else grad_kernel

        def per_device(features, kernel, grad, winner):
            grad_features, grad_kernel = _winner_backward(features, kernel, grad, winner, chunk, sum_over_batch_shards)
            if split.vocab_axes:  # each vocabulary shard gave the features its words' share
                grad_features = jax.lax.psum(grad_features, split.vocab_axes)
            return grad_features, grad_kernel

        pools = split.spec("batch", "vocab")
        in_specs = (split.spec("batch"), split.spec(None, "vocab"), pools, pools)
        out_specs = (split.spec("batch"), split.spec("width", "vocab"))
        grad_features, grad_kernel = split.per_device(per_device, in_specs, out_specs)(features, kernel, grad, winner)
    return grad_features.astype(features.dtype), grad_kernel.astype(kernel.dtype), jnp.sum(grad, axis=0), None


def _winner_backward(
    features, kernel, grad, winner, chunk, reduce_kernel_grad=lambda g: g
) -> tuple[jax.Array, jax.Array]:
    """float32 (grad features [b, len, w], grad kernel [w, V]) of the max pool, scanned over vocabulary chunks; each
    chunk's kernel gradient [w, c] goes through `reduce_kernel_grad` (which may shrink w) before it is kept."""
    vocab = kernel.shape[1]
    num_chunks = -(-vocab // chunk) if 0 < chunk < vocab else 1
    rows = _rows_per_step(features.shape[0], -(-vocab // num_chunks), features.shape[2])

    def chunk_gradients(grad_features, chunk_args):
        chunk_kernel, chunk_grad, chunk_winner = chunk_args
        grad_kernel, grad_rows = _winner_gradients(features, chunk_kernel, chunk_grad, chunk_winner, rows)
        return grad_features + grad_rows, reduce_kernel_grad(grad_kernel)

    chunks = tuple(to_strided_chunks(x, num_chunks) for x in (kernel, grad, winner))
    grad_features, grad_kernel = jax.lax.scan(chunk_gradients, jnp.zeros(features.shape, jnp.float32), chunks)
    return grad_features, from_strided_chunks(grad_kernel, vocab)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def _winner_gradients(features, kernel, grad, winner, rows: int) -> tuple[jax.Array, jax.Array]:
    """features [b, len, w], kernel [w, c], grad and winner [b, c] -> (grad kernel [w, c], grad features [b, len, w]):
    a scan over the batch, `rows` rows (a multiple of the batch shards, see `_rows_per_step`) per step."""
    batch, tokens, width = features.shape
    columns = kernel.T.astype(jnp.float32)  # [c, w]

    def by_step(x):  # [b, ...] -> [b / rows, rows, ...], row r * (b / rows) + i at [i, r]: each shard's rows stay local
        return x.reshape(rows, batch // rows, *x.shape[1:]).swapaxes(0, 1)

    def step_gradients(grad_kernel, step_rows):
        row_features, row_grad, row_winner = step_rows  # [rows, len, w], [rows, c], [rows, c]
        won = jnp.take_along_axis(row_features, row_winner[..., None], axis=1).astype(jnp.float32)  # [rows, c, w]
        grad_kernel = grad_kernel + jnp.sum(row_grad[..., None] * won, axis=0)
        segment_sum = lambda g, w: jax.ops.segment_sum(g[:, None] * columns, w, tokens)  # noqa: E731
        return grad_kernel, jax.vmap(segment_sum)(row_grad, row_winner)

    grad_kernel, grad_rows = jax.lax.scan(
        step_gradients, jnp.zeros(columns.shape, jnp.float32), (by_step(features), by_step(grad), by_step(winner))
    )
    return grad_kernel.T, grad_rows.swapaxes(0, 1).reshape(batch, tokens, width)


def _rows_per_step(batch: int, chunk_words: int, width: int) -> int:
    """Batch rows per step of the backward scan. XLA:CPU runs one row's gather and segment sum as tight loops, but the
    same ops batched over rows (or as one-hot matmuls) several times slower: one row per batch shard there. An
    accelerator wants few, wide steps instead: as many rows as keep the gathered [rows, chunk, width] float32 block
    within ROWS_BUDGET_BYTES."""
    rows = _batch_shards(batch)
    if jax.default_backend() == "cpu":
        return rows
    while batch % (2 * rows) == 0 and 2 * rows * chunk_words * width * 4 <= ROWS_BUDGET_BYTES:
        rows *= 2
    return rows


def _batch_shards(batch: int) -> int:
    """How many devices the activations' batch axis is split over under the current mesh and logical rules (1 with
    no mesh), as a divisor of `batch`."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = nn.logical_to_mesh_axes(("act_batch",))[0]
    axes = (axes,) if isinstance(axes, str) else axes or ()
    # Inside a shard_map (the fused impl's backward) a manual axis splits nothing: each device sees its own rows.
    return math.gcd(batch, math.prod(mesh.shape.get(axis, 1) for axis in axes if axis not in mesh.manual_axes))


def saturate(logits: jax.Array) -> jax.Array:
    """log(1 + ReLU(z)): the SPLADE/LexLIP weight, >= 0 and sub-linear."""
    return jnp.log1p(jax.nn.relu(logits))
