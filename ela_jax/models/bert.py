"""BERT text tower, numerically the architecture of `transformers.BertModel` (without its pooler), and of
DistilBertModel with `type_vocab_size` 0 (no token type embeddings)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ela_jax.models import layers


class BertEncoder(nn.Module):
    config: ml_collections.ConfigDict  # model.text
    vocab_size: int
    remat: bool = False
    remat_policy: str = "full"
    scan: bool = False
    dtype: layers.Dtype = jnp.float32
    attention_batch_splits: int = 1

    def setup(self):
        config = self.config
        embed = lambda num, axes, name: nn.Embed(  # noqa: E731
            num, config.width, embedding_init=layers.partitioned(layers.default_kernel_init, *axes), name=name
        )
        self.word_embeddings = embed(self.vocab_size, ("vocab", "embed"), "word_embeddings")
        self.position_embeddings = embed(config.max_position_embeddings, ("positions", "embed"), "position_embeddings")
        if config.type_vocab_size:
            self.token_type_embeddings = embed(config.type_vocab_size, (None, "embed"), "token_type_embeddings")
        self.embeddings_norm = layers.layer_norm(config.layer_norm_eps, self.dtype, "embeddings_norm")
        self.encoder = layers.TransformerStack(
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_dim=config.mlp_dim,
            pre_norm=False,
            layer_norm_eps=config.layer_norm_eps,
            gelu_approximate=config.gelu_approximate,
            remat=self.remat,
            remat_policy=self.remat_policy,
            scan=self.scan,
            dtype=self.dtype,
            attention_batch_splits=self.attention_batch_splits,
            name="encoder",
        )

    def __call__(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
        """token_ids, mask [batch, len] -> hidden states [batch, len, width]; pads (mask False) are not attended."""
        positions = jnp.arange(token_ids.shape[1])[None, :]
        hidden = self.word_embeddings(token_ids) + self.position_embeddings(positions)
        if self.config.type_vocab_size:
            hidden = hidden + self.token_type_embeddings(jnp.zeros_like(token_ids))
        hidden = self.embeddings_norm(hidden.astype(self.dtype))
        hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_len", "act_embed"))
        return self.encoder(hidden, mask.astype(bool))

    def word_embedding_matrix(self) -> jax.Array:
        """[vocab, width], for a decoder tied to the input embeddings."""
        return self.word_embeddings.embedding
