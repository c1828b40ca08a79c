"""Lexicon heads (BERT-MLM shaped) and the saturated, masked max-pooling into |V|-dimensional lexicon vectors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ela_jax.models import layers


class LexiconHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder to the vocabulary (+ bias); the decoder may be tied to embeddings."""

    vocab_size: int
    layer_norm_eps: float
    gelu_approximate: bool
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array, tied_embedding: jax.Array | None = None) -> jax.Array:
        """hidden [batch, len, width] -> vocabulary logits [batch, len, vocab] in float32."""
        width = hidden.shape[-1]
        transformed = nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=layers.partitioned(layers.default_kernel_init, "embed", "mlp"),
            bias_init=layers.partitioned(nn.initializers.zeros, "mlp"),
            name="transform",
        )(hidden)
        transformed = layers.gelu(transformed, self.gelu_approximate)
        transformed = layers.layer_norm(self.layer_norm_eps, self.dtype, "transform_norm")(transformed)
        bias = self.param("decoder_bias", layers.partitioned(nn.initializers.zeros, "vocab"), (self.vocab_size,))
        if tied_embedding is None:
            kernel = self.param(
                "decoder_kernel",
                layers.partitioned(layers.default_kernel_init, "mlp", "vocab"),
                (width, self.vocab_size),
            )
        else:
            kernel = tied_embedding.T  # [width, vocab]
        logits = jnp.einsum("blw,wv->blv", transformed, kernel.astype(self.dtype))
        logits = logits.astype(jnp.float32) + bias
        return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))


def saturate(logits: jax.Array) -> jax.Array:
    """log(1 + ReLU(z)): the SPLADE/LexLIP weight, >= 0 and sub-linear."""
    return jnp.log1p(jax.nn.relu(logits))


def pool_lexicon(logits: jax.Array, token_mask: jax.Array) -> jax.Array:
    """a[v] = log(1 + max_k ReLU(z_k[v])) over tokens with token_mask True: [batch, len, vocab] -> [batch, vocab].

    ReLU outputs are >= 0, so zeroing masked tokens before the max equals excluding them (an all-masked row gives 0).
    """
    activated = jax.nn.relu(logits) * token_mask[..., None].astype(logits.dtype)
    return jnp.log1p(jnp.max(activated, axis=1))
