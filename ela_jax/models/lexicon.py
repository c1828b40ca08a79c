"""Lexicon heads (BERT-MLM shaped) and the saturated, masked max-pooling into |V|-dimensional lexicon vectors.

The head's per-token vocabulary logits are [batch, tokens, vocab]: 1.5 GB in float32 for 64 images x 196 patches x
30522 words. The objectives only need them pooled over tokens ([batch, vocab]), so `LexiconHead.pooled` can compute
the pools in vocabulary chunks under `jax.checkpoint`: forward and backward then hold one [batch, tokens, chunk] slab
at a time instead of the whole tensor.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ela_jax.models import layers

TOKEN_POOLS = ("max", "mean", "logsumexp")
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
            self.decoder_kernel = self.param(
                "decoder_kernel",
                layers.partitioned(layers.default_kernel_init, "mlp", "vocab"),
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
        pooled = pool_vocab_logits(features, kernel, self.decoder_bias, token_mask, pools, self.chunk)
        return {name: mask_words(value[:, : self.vocab_size], self.masked_ids) for name, value in pooled.items()}


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
) -> dict[str, jax.Array]:
    """pool_tokens(features @ kernel + bias) for each pool; features [b, len, w], kernel [w, V], bias [V].

    With 0 < chunk < V the vocabulary is split into ceil(V / chunk) strided chunks (chunk i holds words i, i + n, ...,
    so a vocabulary axis sharded in contiguous blocks stays sharded inside every chunk), mapped sequentially, each
    under `jax.checkpoint` so the backward pass recomputes its logits instead of storing them.
    """

    def pool_chunk(chunk_kernel: jax.Array, chunk_bias: jax.Array) -> tuple[jax.Array, ...]:
        logits = layers.token_matmul(features, chunk_kernel, jnp.float32) + chunk_bias  # float32 sums, as __call__
        logits = nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
        return tuple(pool_tokens(logits, token_mask, how) for how in pools)

    vocab = kernel.shape[1]
    if chunk <= 0 or chunk >= vocab:
        return dict(zip(pools, pool_chunk(kernel, bias)))
    num_chunks = -(-vocab // chunk)
    padding = num_chunks * chunk - vocab
    kernel = jnp.pad(kernel, ((0, 0), (0, padding)))
    bias = jnp.pad(bias, (0, padding))
    # word v = j * num_chunks + i sits at [j, i]: chunk i is the strided set {i, i + num_chunks, ...}.
    kernel_chunks = kernel.reshape(kernel.shape[0], chunk, num_chunks).transpose(2, 0, 1)  # [n, w, chunk]
    bias_chunks = bias.reshape(chunk, num_chunks).T  # [n, chunk]
    pooled = jax.lax.map(lambda args: jax.checkpoint(pool_chunk)(*args), (kernel_chunks, bias_chunks))
    # [n, b, chunk] -> [b, chunk, n] -> [b, chunk * n] puts word j * n + i back at its index.
    unchunk = lambda x: x.transpose(1, 2, 0).reshape(x.shape[1], -1)[:, :vocab]  # noqa: E731
    return {how: unchunk(value) for how, value in zip(pools, pooled)}


def saturate(logits: jax.Array) -> jax.Array:
    """log(1 + ReLU(z)): the SPLADE/LexLIP weight, >= 0 and sub-linear."""
    return jnp.log1p(jax.nn.relu(logits))
