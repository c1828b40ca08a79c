"""The ELA dual encoder: ViT and BERT towers with global, token (FILIP) and lexicon heads."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ela_jax.models import layers, lexicon
from ela_jax.models.bert import BertEncoder
from ela_jax.models.vit import VisionTransformer

# The text-side parameter groups: what an EMA or frozen expansion teacher keeps a copy of.
TEXT_PARAM_GROUPS = ("text_tower", "text_lexicon")


def l2_normalise(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def projection(features: int, name: str, dtype) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,
        dtype=dtype,
        kernel_init=layers.partitioned(layers.default_kernel_init, "embed", "project"),
        name=name,
    )


class ELAModel(nn.Module):
    config: ml_collections.ConfigDict  # config.model with vocab_size resolved

    def setup(self):
        config = self.config
        dtype = jnp.dtype(config.dtype)
        self.image_tower = VisionTransformer(config.image, remat=config.remat, dtype=dtype)
        self.text_tower = BertEncoder(config.text, config.vocab_size, remat=config.remat, dtype=dtype)
        lexicon_head = lambda tower: lexicon.LexiconHead(  # noqa: E731
            config.vocab_size, tower.layer_norm_eps, tower.gelu_approximate, dtype=dtype
        )
        self.image_lexicon = lexicon_head(config.image)
        self.text_lexicon = lexicon_head(config.text)
        self.image_global = projection(config.embed_dim, "image_global", dtype)
        self.text_global = projection(config.embed_dim, "text_global", dtype)
        self.image_token = projection(config.token_dim, "image_token", dtype)
        self.text_token = projection(config.token_dim, "text_token", dtype)
        init_log_scale = nn.initializers.constant(math.log(1.0 / config.init_temperature))
        self.global_log_scale = self.param("global_log_scale", layers.partitioned(init_log_scale), ())
        self.fine_log_scale = self.param("fine_log_scale", layers.partitioned(init_log_scale), ())

    def logit_scales(self) -> dict[str, jax.Array]:
        """exp(learnable log scale), clipped at 1 / min_temperature (CLIP clips at 100)."""
        max_log_scale = math.log(1.0 / self.config.min_temperature)
        return {
            "global": jnp.exp(jnp.minimum(self.global_log_scale, max_log_scale)),
            "fine": jnp.exp(jnp.minimum(self.fine_log_scale, max_log_scale)),
        }

    def pool(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        """The global head's input: the CLS state, or the mean over real tokens (CLS included), [b, width]."""
        if self.config.global_pool == "cls":
            return hidden[:, 0]
        weights = mask.astype(hidden.dtype)[..., None]
        return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

    def normalise_pixels(self, images: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.config.image.pixel_mean, jnp.float32)
        std = jnp.asarray(self.config.image.pixel_std, jnp.float32)
        return (images.astype(jnp.float32) / 255.0 - mean) / std

    def encode_image(self, images: jax.Array, with_lexicon: bool = True, with_tokens: bool = True) -> dict:
        """images uint8 [batch, H, W, 3] -> hidden [b, 1+patches, width], global [b, embed_dim] and, as asked,
        token_embeddings [b, patches, token_dim], vocab_logits [b, patches, vocab], lexicon [b, vocab]."""
        hidden = self.image_tower(self.normalise_pixels(images))
        patches = hidden[:, 1:]
        pooled = self.pool(hidden, jnp.ones(hidden.shape[:2], bool))
        outputs = {"hidden": hidden, "global": l2_normalise(self.image_global(pooled))}
        outputs["token_mask"] = jnp.ones(patches.shape[:2], bool)
        if with_tokens:
            outputs["token_embeddings"] = l2_normalise(self.image_token(patches))
        if with_lexicon:
            vocab_logits = self.image_lexicon(patches)
            outputs["vocab_logits"] = vocab_logits
            outputs["lexicon"] = lexicon.pool_lexicon(vocab_logits, outputs["token_mask"])
        return outputs

    def encode_text(
        self, token_ids: jax.Array, mask: jax.Array, with_lexicon: bool = True, with_tokens: bool = True
    ) -> dict:
        """token_ids, mask [batch, len] -> hidden [b, len, width], global [b, embed_dim] and, as asked,
        token_embeddings [b, len, token_dim], vocab_logits [b, len, vocab], lexicon [b, vocab]. Token-level
        outputs exclude CLS and pads through token_mask."""
        hidden = self.text_tower(token_ids, mask)
        token_mask = jnp.asarray(mask, bool).at[:, 0].set(False)
        pooled = self.pool(hidden, jnp.asarray(mask, bool))
        outputs = {"hidden": hidden, "global": l2_normalise(self.text_global(pooled)), "token_mask": token_mask}
        if with_tokens:
            outputs["token_embeddings"] = l2_normalise(self.text_token(hidden))
        if with_lexicon:
            vocab_logits = self.text_vocab_logits(hidden)
            outputs["vocab_logits"] = vocab_logits
            outputs["lexicon"] = lexicon.pool_lexicon(vocab_logits, token_mask)
        return outputs

    def text_vocab_logits(self, hidden: jax.Array) -> jax.Array:
        """The text lexicon head, which is also the MLM head: [b, len, width] -> [b, len, vocab]."""
        tied = self.text_tower.word_embedding_matrix() if self.config.lexicon.tie_text_decoder else None
        return self.text_lexicon(hidden, tied_embedding=tied)

    def mlm_logits(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Vocabulary logits of every position of a (corrupted) caption: [b, len] -> [b, len, vocab]."""
        return self.text_vocab_logits(self.text_tower(token_ids, mask))

    def __call__(self, images: jax.Array, token_ids: jax.Array, mask: jax.Array):
        """Runs every head once (this is what `init` traces)."""
        return self.encode_image(images), self.encode_text(token_ids, mask), self.logit_scales()
