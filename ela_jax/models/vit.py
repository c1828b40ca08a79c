"""ViT image tower, numerically the architecture of `transformers.ViTModel` (without its pooler)."""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ela_jax.models import layers


class VisionTransformer(nn.Module):
    config: ml_collections.ConfigDict  # model.image
    remat: bool = False
    remat_policy: str = "full"
    scan: bool = False
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels: normalised float [batch, H, W, 3] -> hidden states [batch, 1 + patches, width] (CLS first)."""
        config = self.config
        patches = nn.Conv(
            config.width,
            kernel_size=(config.patch_size, config.patch_size),
            strides=(config.patch_size, config.patch_size),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=layers.partitioned(layers.default_kernel_init, "patch", None, "channels", "embed"),
            bias_init=layers.partitioned(nn.initializers.zeros, "embed"),
            name="patch_embedding",
        )(pixels)
        patches = einops.rearrange(patches, "b h w d -> b (h w) d")
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
            name="encoder",
        )(hidden, None)
        return layers.layer_norm(config.layer_norm_eps, self.dtype, "final_norm")(hidden)
