"""ViT image tower, numerically the architecture of `transformers.ViTModel` (without its pooler) and, through the
switches in model.image, of CLIPVisionModel, SiglipVisionModel and Dinov2Model (with or without registers).

Whatever the switches, the tower returns [batch, 1 + patches, width]: a summary token first (the class token, or
SigLIP's attention-pooled state), then one state per patch, which is what ELAModel's heads read."""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ela_jax.models import layers


class PatchEmbedding(nn.Module):
    """nn.Conv(kernel = stride = patch) with the same parameters, computed as one matmul over flattened patches: the
    same values, and XLA:CPU runs the dot's backward faster than the convolution's."""

    width: int
    patch_size: int
    dtype: layers.Dtype = jnp.float32
    use_bias: bool = True  # CLIP's patch convolution has none

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        """[batch, H, W, channels] -> [batch, (H / patch) * (W / patch), width], patches in row-major order."""
        size, channels = self.patch_size, pixels.shape[-1]
        kernel_init = layers.partitioned(layers.default_kernel_init, "patch", None, "channels", "embed")
        kernel = self.param("kernel", kernel_init, (size, size, channels, self.width))
        rows, columns = pixels.shape[1] // size * size, pixels.shape[2] // size * size  # VALID drops the remainder
        grid = einops.rearrange(pixels[:, :rows, :columns], "b (h p) (w q) c -> b (h w) (p q c)", p=size, q=size)
        flat_kernel = kernel.reshape(size * size * channels, self.width).astype(self.dtype)
        embedded = layers.token_matmul(grid.astype(self.dtype), flat_kernel)
        if not self.use_bias:
            return embedded
        bias = self.param("bias", layers.partitioned(nn.initializers.zeros, "embed"), (self.width,))
        return embedded + bias.astype(self.dtype)


class AttentionPool(nn.Module):
    """SigLIP's multihead attention pooling head: a learned probe attends over all tokens, then a pre-LN MLP with a
    residual. The q/k/v projections are one [embed, 3, heads, kv] kernel, torch.nn.MultiheadAttention's in_proj."""

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float
    gelu_approximate: bool
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        """[batch, len, width] -> [batch, width]."""
        width = hidden.shape[-1]
        head_dim = width // self.num_heads
        probe = self.param("probe", layers.partitioned(layers.default_kernel_init, None, None, "embed"), (1, 1, width))
        kernel = self.param(
            "qkv_kernel",
            layers.partitioned(layers.default_kernel_init, "embed", None, "heads", "kv"),
            (width, 3, self.num_heads, head_dim),
        )
        bias = self.param(
            "qkv_bias", layers.partitioned(nn.initializers.zeros, None, "heads", "kv"), (3, self.num_heads, head_dim)
        )
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
        query = layers.token_matmul(probe.astype(self.dtype), kernel[:, 0].reshape(width, -1))
        query = (query.reshape(1, 1, self.num_heads, head_dim) + bias[0]) * jnp.asarray(
            1 / np.sqrt(head_dim), self.dtype
        )
        key_value = layers.token_matmul(hidden.astype(self.dtype), kernel[:, 1:].reshape(width, -1))
        key, value = jnp.unstack(key_value.reshape(*hidden.shape[:2], 2, self.num_heads, head_dim) + bias[1:], axis=-3)
        query = jnp.broadcast_to(query, (hidden.shape[0], *query.shape[1:]))
        pooled = layers.HeadMerge(dtype=self.dtype, name="output")(layers.attend(query, key, value, None), width)
        mlp = layers.MLP(self.mlp_dim, self.gelu_approximate, dtype=self.dtype, name="mlp")
        pooled = pooled + mlp(layers.layer_norm(self.layer_norm_eps, self.dtype, "norm")(pooled))
        return pooled[:, 0]


class VisionTransformer(nn.Module):
    config: ml_collections.ConfigDict  # model.image
    remat: bool = False
    remat_policy: str = "full"
    scan: bool = False
    dtype: layers.Dtype = jnp.float32
    attention_batch_splits: int = 1

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels: normalised float [batch, H, W, 3] -> hidden states [batch, 1 + patches, width] (summary first)."""
        config = self.config
        patches = PatchEmbedding(
            config.width, config.patch_size, dtype=self.dtype, use_bias=config.patch_bias, name="patch_embedding"
        )(pixels)
        batch, num_patches, width = patches.shape
        hidden = patches.astype(self.dtype)
        if config.class_token:
            cls_token = self.param(
                "cls_token", layers.partitioned(layers.default_kernel_init, None, None, "embed"), (1, 1, width)
            )
            hidden = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, width)).astype(self.dtype), hidden], 1)
        positions = self.param(
            "position_embeddings",
            layers.partitioned(layers.default_kernel_init, None, "positions", "embed"),
            (1, hidden.shape[1], width),
        )
        hidden = hidden + positions.astype(self.dtype)
        if config.register_tokens:
            # DINOv2's registers: extra learned tokens after the class token, without position embeddings.
            registers = self.param(
                "register_tokens",
                layers.partitioned(layers.default_kernel_init, None, None, "embed"),
                (1, config.register_tokens, width),
            )
            registers = jnp.broadcast_to(registers, (batch, config.register_tokens, width)).astype(self.dtype)
            hidden = jnp.concatenate([hidden[:, :1], registers, hidden[:, 1:]], axis=1)
        if config.embedding_norm:
            hidden = layers.layer_norm(config.layer_norm_eps, self.dtype, "embedding_norm")(hidden)
        hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_len", "act_embed"))
        hidden = layers.TransformerStack(
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_dim=config.mlp_dim,
            pre_norm=True,
            layer_norm_eps=config.layer_norm_eps,
            gelu_approximate=config.gelu_approximate,
            remat=self.remat,
            remat_policy=self.remat_policy,
            scan=self.scan,
            dtype=self.dtype,
            attention_batch_splits=self.attention_batch_splits,
            quick_gelu=config.quick_gelu,
            layer_scale=config.layer_scale,
            name="encoder",
        )(hidden, None)
        if config.register_tokens:  # they served attention; they are neither summary nor patch
            hidden = jnp.concatenate([hidden[:, :1], hidden[:, 1 + config.register_tokens :]], axis=1)
        final_norm = layers.layer_norm(config.layer_norm_eps, self.dtype, "final_norm")
        if config.final_norm == "class_token":  # CLIP normalises only the state its projection reads
            hidden = jnp.concatenate([final_norm(hidden[:, :1]), hidden[:, 1:]], axis=1)
        else:
            hidden = final_norm(hidden)
        if config.attention_pool:
            pooled = AttentionPool(
                config.num_heads,
                config.mlp_dim,
                config.layer_norm_eps,
                config.gelu_approximate,
                dtype=self.dtype,
                name="attention_pool",
            )(hidden)
            hidden = jnp.concatenate([pooled[:, None].astype(hidden.dtype), hidden], axis=1)
        return hidden
