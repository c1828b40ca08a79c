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
# The learnable log logit scales (1 / temperature), clamped at max_log_scale after every update.
LOG_SCALE_PARAMS = ("global_log_scale", "fine_log_scale")


def max_log_scale(model_config: ml_collections.ConfigDict) -> float:
    """log(1 / min_temperature): the largest log logit scale training allows (CLIP: log 100)."""
    return math.log(1.0 / model_config.min_temperature)


def l2_normalise(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def projection(features: int, name: str, dtype) -> layers.TokenDense:
    return layers.TokenDense(
        features,
        use_bias=False,
        dtype=dtype,
        kernel_init=layers.partitioned(layers.default_kernel_init, "embed", "project"),
        name=name,
    )


class ELAModel(nn.Module):
    config: ml_collections.ConfigDict  # config.model with vocab_size resolved
    # The tokenizer's special tokens ([PAD], [CLS], ...): kept out of every lexicon vector and vocabulary logit.
    special_ids: tuple[int, ...] = ()

    def setup(self):
        config = self.config
        dtype = jnp.dtype(config.dtype)
        padded_vocab = lexicon.padded_size(config.vocab_size, config.vocab_multiple)
        stack = dict(
            remat=config.remat,
            remat_policy=config.remat_policy,
            scan=config.scan_layers,
            dtype=dtype,
            attention_batch_splits=config.attention_batch_splits,
        )
        self.image_tower = VisionTransformer(config.image, **stack)
        self.text_tower = BertEncoder(config.text, padded_vocab, **stack)
        lexicon_head = lambda tower, tied: lexicon.LexiconHead(  # noqa: E731
            width=tower.width,
            vocab_size=config.vocab_size,
            padded_vocab_size=padded_vocab,
            layer_norm_eps=tower.layer_norm_eps,
            gelu_approximate=tower.gelu_approximate,
            tied=tied,
            chunk=config.lexicon.chunk,
            impl=config.lexicon.impl,
            interpret=config.lexicon.pallas_interpret,
            dtype=dtype,
            masked_ids=self.special_ids,
        )
        self.image_lexicon = lexicon_head(config.image, tied=False)
        self.text_lexicon = lexicon_head(config.text, tied=config.lexicon.tie_text_decoder)
        self.image_global = projection(config.embed_dim, "image_global", dtype)
        self.text_global = projection(config.embed_dim, "text_global", dtype)
        self.image_token = projection(config.token_dim, "image_token", dtype)
        self.text_token = projection(config.token_dim, "text_token", dtype)
        init_log_scale = nn.initializers.constant(math.log(1.0 / config.init_temperature))
        init_global_log_scale = init_log_scale
        # SigLIP's start (scale 10, bias -10): every pair begins near "no match", as nearly all of a batch's pairs are,
        # so the first steps are not spent undoing a large loss on the negatives.
        if config.sigmoid.enabled:
            init_global_log_scale = nn.initializers.constant(math.log(config.sigmoid.init_scale))
            init_bias = nn.initializers.constant(config.sigmoid.init_bias)
            self.global_logit_bias = self.param("global_logit_bias", layers.partitioned(init_bias), ())
        self.global_log_scale = self.param("global_log_scale", layers.partitioned(init_global_log_scale), ())
        self.fine_log_scale = self.param("fine_log_scale", layers.partitioned(init_log_scale), ())

    def logit_scales(self) -> dict[str, jax.Array]:
        """exp(learnable log scale), and the global logit bias where the sigmoid loss learns one. Training clamps the
        log scale at `max_log_scale` after each update (as CLIP does) instead of clipping here: a clip in the forward
        pass has zero gradient past the cap and can stick."""
        scales = {"global": jnp.exp(self.global_log_scale), "fine": jnp.exp(self.fine_log_scale)}
        if self.config.sigmoid.enabled:
            scales["global_bias"] = self.global_logit_bias
        return scales

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

    def encode_image(
        self,
        images: jax.Array,
        with_lexicon: bool = True,
        with_tokens: bool = True,
        with_patch_logits: bool = False,
        patch_pool: str = "max",
    ) -> dict:
        """images uint8 [batch, H, W, 3] -> hidden [b, 1+patches, width], global [b, embed_dim] and, as asked,
        token_embeddings [b, patches, token_dim], lexicon [b, vocab] with pooled_vocab_logits [b, vocab] (the patch
        logits pooled by `patch_pool`: the ELA loss's z_hat), and vocab_logits [b, patches, vocab]."""
        hidden = self.image_tower(self.normalise_pixels(images))
        patches = hidden[:, 1:]
        pooled = self.pool(hidden, jnp.ones(hidden.shape[:2], bool))
        outputs = {"hidden": hidden, "global": l2_normalise(self.image_global(pooled))}
        outputs["token_mask"] = jnp.ones(patches.shape[:2], bool)
        if with_tokens:
            outputs["token_embeddings"] = l2_normalise(self.image_token(patches))
        if with_lexicon:
            outputs.update(self.lexicon_outputs(self.image_lexicon, patches, outputs["token_mask"], patch_pool))
        if with_patch_logits:
            outputs["vocab_logits"] = self.image_lexicon(patches)
        return outputs

    def encode_text(
        self,
        token_ids: jax.Array,
        mask: jax.Array,
        with_lexicon: bool = True,
        with_tokens: bool = True,
        with_token_logits: bool = False,
    ) -> dict:
        """token_ids, mask [batch, len] -> hidden [b, len, width], global [b, embed_dim] and, as asked,
        token_embeddings [b, len, token_dim], lexicon [b, vocab] and vocab_logits [b, len, vocab]. Token-level
        outputs exclude CLS and pads through token_mask."""
        hidden = self.text_tower(token_ids, mask)
        token_mask = jnp.asarray(mask, bool).at[:, 0].set(False)
        pooled = self.pool(hidden, jnp.asarray(mask, bool))
        outputs = {"hidden": hidden, "global": l2_normalise(self.text_global(pooled)), "token_mask": token_mask}
        if with_tokens:
            outputs["token_embeddings"] = l2_normalise(self.text_token(hidden))
        if with_lexicon:
            outputs.update(self.lexicon_outputs(self.text_lexicon, hidden, token_mask, "max"))
        if with_token_logits:
            outputs["vocab_logits"] = self.text_vocab_logits(hidden)
        return outputs

    def lexicon_outputs(self, head: lexicon.LexiconHead, hidden: jax.Array, token_mask: jax.Array, pool: str) -> dict:
        """lexicon a = log(1 + ReLU(max-pooled logits)) and the `pool`-pooled logits, chunked as configured."""
        pools = ("max",) if pool == "max" else ("max", pool)
        pooled = head.pooled(hidden, token_mask, pools, tied_embedding=self.tied_embedding(head))
        return {"lexicon": lexicon.saturate(pooled["max"]), "pooled_vocab_logits": pooled[pool]}

    def tied_embedding(self, head: lexicon.LexiconHead) -> jax.Array | None:
        return self.text_tower.word_embedding_matrix() if head.tied else None

    def text_vocab_logits(self, hidden: jax.Array) -> jax.Array:
        """The text lexicon head, which is also the MLM head: [b, len, width] -> [b, len, vocab]."""
        return self.text_lexicon(hidden, tied_embedding=self.tied_embedding(self.text_lexicon))

    def mlm_logits(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Vocabulary logits of every position of a (corrupted) caption: [b, len] -> [b, len, vocab]."""
        return self.text_vocab_logits(self.text_tower(token_ids, mask))

    def mlm_token_losses(self, token_ids: jax.Array, mask: jax.Array, labels: jax.Array) -> jax.Array:
        """MLM's cross-entropy of `labels` at every position of a (corrupted) caption, [b, len], without the
        [b, len, vocab] logits (`LexiconHead.token_cross_entropy`)."""
        head = self.text_lexicon
        return head.token_cross_entropy(self.text_tower(token_ids, mask), labels, self.tied_embedding(head))

    def __call__(self, images: jax.Array, token_ids: jax.Array, mask: jax.Array):
        """Runs every head once (this is what `init` traces)."""
        return (
            self.encode_image(images, with_patch_logits=True),
            self.encode_text(token_ids, mask, with_token_logits=True),
            self.logit_scales(),
        )


def copy_text_lexicon_to_image(params: dict, tie_text_decoder: bool) -> dict:
    """The image lexicon head starts as the text (MLM) head; a tied decoder becomes the image decoder kernel."""
    image_head = dict(params["text_lexicon"])
    if tie_text_decoder:
        image_head["decoder_kernel"] = params["text_tower"]["word_embeddings"]["embedding"].T
    return {**params, "image_lexicon": image_head}
