"""The transformer pieces both towers share: attention, MLP, one block (pre- or post-LN) and the layer stack.

Every parameter is created with logical axis names; `ela_jax.parallel` maps them to mesh axes.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
default_kernel_init = nn.initializers.truncated_normal(stddev=0.02)  # BERT's and ViT's initializer_range


def partitioned(init, *axes: str | None):
    return nn.with_logical_partitioning(init, axes)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        scale_init=partitioned(nn.initializers.ones, "norm"),
        bias_init=partitioned(nn.initializers.zeros, "norm"),
        name=name,
    )


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
    return nn.gelu(x, approximate=approximate)


class MultiHeadAttention(nn.Module):
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """x [batch, len, embed]; key_mask [batch, len] (True = attend) or None."""
        width = x.shape[-1]
        head_dim = width // self.num_heads
        project = functools.partial(
            nn.DenseGeneral,
            features=(self.num_heads, head_dim),
            dtype=self.dtype,
            kernel_init=partitioned(default_kernel_init, "embed", "heads", "kv"),
            bias_init=partitioned(nn.initializers.zeros, "heads", "kv"),
        )
        query, key, value = (project(name=name)(x) for name in ("query", "key", "value"))  # [b, l, heads, kv]
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [b, 1, 1, l] broadcast over heads, queries
        attended = jax.nn.dot_product_attention(query, key, value, mask=mask)
        attended = nn.with_logical_constraint(attended, ("act_batch", "act_len", "act_heads", None))
        return nn.DenseGeneral(
            features=width,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=partitioned(default_kernel_init, "heads", "kv", "embed"),
            bias_init=partitioned(nn.initializers.zeros, "embed"),
            name="output",
        )(attended)


class MLP(nn.Module):
    mlp_dim: int
    gelu_approximate: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            kernel_init=partitioned(default_kernel_init, "embed", "mlp"),
            bias_init=partitioned(nn.initializers.zeros, "mlp"),
            name="intermediate",
        )(x)
        hidden = gelu(hidden, self.gelu_approximate)
        return nn.Dense(
            x.shape[-1],
            dtype=self.dtype,
            kernel_init=partitioned(default_kernel_init, "mlp", "embed"),
            bias_init=partitioned(nn.initializers.zeros, "embed"),
            name="output",
        )(hidden)


class TransformerBlock(nn.Module):
    """One block for both towers: pre-LN as in ViT, post-LN as in BERT."""

    num_heads: int
    mlp_dim: int
    pre_norm: bool
    layer_norm_eps: float
    gelu_approximate: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        attention = MultiHeadAttention(self.num_heads, dtype=self.dtype, name="attention")
        mlp = MLP(self.mlp_dim, self.gelu_approximate, dtype=self.dtype, name="mlp")
        attention_norm = layer_norm(self.layer_norm_eps, self.dtype, "attention_norm")
        mlp_norm = layer_norm(self.layer_norm_eps, self.dtype, "mlp_norm")
        if self.pre_norm:
            x = x + attention(attention_norm(x), key_mask)
            x = x + mlp(mlp_norm(x))
        else:
            x = attention_norm(x + attention(x, key_mask))
            x = mlp_norm(x + mlp(x))
        return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class TransformerStack(nn.Module):
    depth: int
    num_heads: int
    mlp_dim: int
    pre_norm: bool
    layer_norm_eps: float
    gelu_approximate: bool
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        block_class = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        for index in range(self.depth):
            x = block_class(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                pre_norm=self.pre_norm,
                layer_norm_eps=self.layer_norm_eps,
                gelu_approximate=self.gelu_approximate,
                dtype=self.dtype,
                name=f"layer_{index}",
            )(x, key_mask)
        return x
