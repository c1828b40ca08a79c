"""ViT image tower, numerically the architecture of `transformers.ViTModel` (without its pooler)."""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ela_jax.models import layers


class PatchEmbedding(nn.Module):
    """nn.Conv(kernel = stride = patch) with the same parameters, computed as one matmul over flattened patches: the
    same values, and XLA:CPU runs the dot's backward faster than the convolution's."""

    width: int
    patch_size: int
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        """[batch, H, W, channels] -> [batch, (H / patch) * (W / patch), width], patches in row-major order."""
        size, channels = self.patch_size, pixels.shape[-1]
        kernel_init = layers.partitioned(layers.default_kernel_init, "patch", None, "channels", "embed")
        kernel = self.param("kernel", kernel_init, (size, size, channels, self.width))
        bias = self.param("bias", layers.partitioned(nn.initializers.zeros, "embed"), (self.width,))
        rows, columns = pixels.shape[1] // size * size, pixels.shape[2] // size * size  # VALID drops the remainder
        grid = einops.rearrange(pixels[:, :rows, :columns], "b (h p) (w q) c -> b (h w) (p q c)", p=size, q=size)
        flat_kernel = kernel.reshape(size * size * channels, self.width).astype(self.dtype)
        return layers.token_matmul(grid.astype(self.dtype), flat_kernel) + bias.astype(self.dtype)


class VisionTransformer(nn.Module):
    config: ml_collections.ConfigDict  # model.image
    remat: bool = False
    remat_policy: str = "full"
    scan: bool = False
    dtype: layers.Dtype = jnp.float32
    attention_batch_splits: int = 1

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels: normalised float [batch, H, W, 3] -> hidden states [batch, 1 + patches, width] (CLS first)."""
        config = self.config
        patches = PatchEmbedding(config.width, config.patch_size, dtype=self.dtype, name="patch_embedding")(pixels)
        batch, num_patches, width = patches.shape
        cls_token = self.param(
            "cls_token", layers.partitioned(layers.default_kernel_init, None, None, "embed"), (1, 1, width)
        )
        positions = self.param(
            "position_embeddings",
            layers.partitioned(layers.default_kernel_init, None, "positions", "embed"),
            (1, num_patches + 1, width),
        )
        cls_tokens = jnp.broadcast_to(cls_token, (batch, 1, width)).astype(self.dtype)
        hidden = jnp.concatenate([cls_tokens, patches], axis=1) + positions.astype(self.dtype)
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
            name="encoder",
        )(hidden, None)
        return layers.layer_norm(config.layer_norm_eps, self.dtype, "final_norm")(hidden)
