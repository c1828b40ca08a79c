"""The transformer pieces both towers share: attention, MLP, one block (pre- or post-LN) and the layer stack.

Every parameter is created with logical axis names; `ela_jax.parallel` maps them to mesh axes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
    """Exact GELU as 0.5 x (1 + erf(x / sqrt 2)) (PyTorch's formula): the same function as `nn.gelu`'s erfc form,
    but XLA:CPU's erf is a short polynomial while erfc needs exp and branches."""
    if approximate:
        return nn.gelu(x, approximate=True)
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def quick_gelu(x: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP towers were trained with (transformers' quick_gelu)."""
    return x * jax.nn.sigmoid(jnp.asarray(1.702, x.dtype) * x)


def _flat_kernel_init(init, fan_in_axes: int = 1):
    """`init` drawn at [prod(fan_in), prod(rest)] and reshaped: the values nn.DenseGeneral gives the same key and
    shape. Boxed for partitioning after the reshape: DenseGeneral boxes before it, and under a mesh Flax then
    constrains the flat kernel with the full kernel's axis names (a rank error while checking parameter shapes)."""

    def wrapped(rng, shape, dtype=jnp.float32):
        flat = (int(np.prod(shape[:fan_in_axes])), int(np.prod(shape[fan_in_axes:])))
        return jnp.reshape(init(rng, flat, dtype), shape)

    return wrapped


class HeadProjection(nn.Module):
    """The parameters of a [embed] -> [heads, kv] projection (nn.DenseGeneral's names, shapes and initial values);
    MultiHeadAttention applies the query, key and value ones together."""

    num_heads: int
    head_dim: int

    @nn.compact
    def __call__(self, width: int) -> tuple[jax.Array, jax.Array]:
        shape = (self.num_heads, self.head_dim)
        kernel_init = partitioned(_flat_kernel_init(default_kernel_init), "embed", "heads", "kv")
        kernel = self.param("kernel", kernel_init, (width, *shape))
        bias = self.param("bias", partitioned(nn.initializers.zeros, "heads", "kv"), shape)
        return kernel, bias


class HeadMerge(nn.Module):
    """[batch, len, heads, kv] -> [batch, len, embed]: nn.DenseGeneral(axis=(-2, -1))'s names, shapes, initial values
    and result, with the kernel boxed after its reshape (see _flat_kernel_init)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, width: int) -> jax.Array:
        kernel_init = partitioned(_flat_kernel_init(default_kernel_init, fan_in_axes=2), "heads", "kv", "embed")
        kernel = self.param("kernel", kernel_init, (*x.shape[-2:], width))
        bias = self.param("bias", partitioned(nn.initializers.zeros, "embed"), (width,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return token_matmul(x.reshape(*x.shape[:-2], -1), kernel.reshape(-1, width)) + bias


class MultiHeadAttention(nn.Module):
    """`batch_splits` > 1 computes the scores, softmax and weighted sum for that many slices of the batch as separate
    ops (same results). XLA:CPU runs such independent ops concurrently on the host's cores, while one batched
    attention over small heads leaves the second core half idle. Keep 1 on accelerators and on a batch-sharded mesh
    (the mesh presets do)."""

    num_heads: int
    dtype: Dtype = jnp.float32
    batch_splits: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """x [batch, len, embed]; key_mask [batch, len] (True = attend) or None."""
        width = x.shape[-1]
        head_dim = width // self.num_heads
        query, key, value = self.project_qkv(x, head_dim)  # [b, l, heads, kv]
        splits = math.gcd(self.batch_splits, x.shape[0])
        implementation = fused_attention_implementation(query.dtype, head_dim)
        if implementation is not None:
            attended = fused_attend(query, key, value, key_mask, implementation)
        elif splits > 1:
            attended = attend_in_slices(query, key, value, key_mask, splits)
        else:
            attended = attend(query, key, value, key_mask)
        attended = nn.with_logical_constraint(attended, ("act_batch", "act_len", "act_heads", None))
        return HeadMerge(dtype=self.dtype, name="output")(attended, width)

    def project_qkv(self, x: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Query (pre-scaled by 1 / sqrt(head_dim)), key and value as one [tokens, embed] x [embed, 3 heads kv] matmul:
        one wide dot runs faster on XLA:CPU than three narrow ones, and scaling the query costs
        len x embed multiplies instead of len x len x heads on the scores."""
        params = [
            HeadProjection(self.num_heads, head_dim, name=name)(x.shape[-1]) for name in ("query", "key", "value")
        ]
        kernel = jnp.stack([kernel for kernel, _ in params], axis=1).astype(self.dtype)  # [embed, 3, heads, kv]
        bias = jnp.stack([bias for _, bias in params]).astype(self.dtype)  # [3, heads, kv]
        qkv = token_matmul(x.astype(self.dtype), kernel.reshape(x.shape[-1], -1))
        query, key, value = jnp.unstack(qkv.reshape(*x.shape[:-1], 3, self.num_heads, head_dim) + bias, axis=-3)
        return query * jnp.asarray(1.0 / np.sqrt(head_dim), self.dtype), key, value


def attend(query: jax.Array, key: jax.Array, value: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """softmax(q kᵀ) v over [b, l, heads, kv] (the query already scaled); key_mask [b, l] (True = attend) or None."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    if key_mask is not None:
        # jax.nn.dot_product_attention's fill value: finite, so a fully masked row stays uniform, not NaN.
        scores = jnp.where(key_mask[:, None, None, :], scores, -0.7 * jnp.finfo(jnp.float32).max)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


def fused_attention_implementation(dtype, head_dim: int) -> str | None:
    """'cudnn' (cuDNN's fused flash attention) on a GPU for the half-precision dtypes and head sizes it supports; None
    elsewhere, where the written-out `attend` runs (XLA has no fused attention on CPU or TPU to pick instead)."""
    supported = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if supported and jax.default_backend() == "gpu" else None


def fused_attend(query, key, value, key_mask: jax.Array | None, implementation: str) -> jax.Array:
    """`attend` through jax.nn.dot_product_attention with the given implementation ('cudnn', or 'xla' in tests)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=1.0, implementation=implementation)


def attend_in_slices(query, key, value, key_mask, splits: int) -> jax.Array:
    """`attend` on `splits` contiguous slices of the batch, concatenated back. Contiguous slices of a batch-sharded
    array live on different devices, so on a mesh each would be resharded: keep splits at 1 there."""
    masks = [None] * splits if key_mask is None else jnp.split(key_mask, splits)
    parts = zip(*(jnp.split(t, splits) for t in (query, key, value)), masks)
    return jnp.concatenate([attend(*part) for part in parts])


def token_matmul(x: jax.Array, kernel: jax.Array, preferred_element_type=None) -> jax.Array:
    """[..., in] x [in, out] as one 2-D matmul over all tokens. XLA:CPU differentiates a dot whose batch and length
    dimensions are both contracted in the weight gradient through transposes and copies; flattened, the weight
    gradient is one plain [in, tokens] x [tokens, out] matmul. `preferred_element_type` sets the accumulation and
    result dtype (float32 for logits computed from bfloat16 inputs)."""
    flat = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, preferred_element_type=preferred_element_type)
    return flat.reshape(*x.shape[:-1], kernel.shape[-1])


class TokenDense(nn.Module):
    """nn.Dense's parameters (names, shapes, initial values) applied through `token_matmul`."""

    features: int
    kernel_init: Any
    bias_init: Any = nn.initializers.zeros
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        outputs = token_matmul(inputs, kernel)
        return outputs if bias is None else outputs + bias


class MLP(nn.Module):
    mlp_dim: int
    gelu_approximate: bool
    dtype: Dtype = jnp.float32
    quick_gelu: bool = False  # CLIP's x * sigmoid(1.702 x) in place of GELU

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = TokenDense(
            self.mlp_dim,
            dtype=self.dtype,
            kernel_init=partitioned(default_kernel_init, "embed", "mlp"),
            bias_init=partitioned(nn.initializers.zeros, "mlp"),
            name="intermediate",
        )(x)
        hidden = quick_gelu(hidden) if self.quick_gelu else gelu(hidden, self.gelu_approximate)
        return TokenDense(
            x.shape[-1],
            dtype=self.dtype,
            kernel_init=partitioned(default_kernel_init, "mlp", "embed"),
            bias_init=partitioned(nn.initializers.zeros, "embed"),
            name="output",
        )(hidden)


class TransformerBlock(nn.Module):
    """One block for both towers: pre-LN as in ViT, post-LN as in BERT. `layer_scale` multiplies each residual branch
    by a learned per-channel vector before it is added (DINOv2's LayerScale; pre-LN only)."""

    num_heads: int
    mlp_dim: int
    pre_norm: bool
    layer_norm_eps: float
    gelu_approximate: bool
    dtype: Dtype = jnp.float32
    attention_batch_splits: int = 1
    quick_gelu: bool = False
    layer_scale: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        attention = MultiHeadAttention(
            self.num_heads, dtype=self.dtype, batch_splits=self.attention_batch_splits, name="attention"
        )
        mlp = MLP(self.mlp_dim, self.gelu_approximate, dtype=self.dtype, quick_gelu=self.quick_gelu, name="mlp")
        attention_norm = layer_norm(self.layer_norm_eps, self.dtype, "attention_norm")
        mlp_norm = layer_norm(self.layer_norm_eps, self.dtype, "mlp_norm")
        if self.pre_norm:
            x = x + self.scaled(attention(attention_norm(x), key_mask), "attention_scale")
            x = x + self.scaled(mlp(mlp_norm(x)), "mlp_scale")
        else:
            x = attention_norm(x + attention(x, key_mask))
            x = mlp_norm(x + mlp(x))
        return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))

    def scaled(self, branch: jax.Array, name: str) -> jax.Array:
        if not self.layer_scale:
            return branch
        scale = self.param(name, partitioned(nn.initializers.ones, "norm"), (branch.shape[-1],))
        return branch * scale.astype(self.dtype)


# What a rematerialised block keeps from its forward pass for the backward pass: "full" keeps nothing (recompute
# everything, least memory), "dots" keeps matmul outputs, "dots_no_batch" keeps matmuls without batch dimensions
# (weights-stationary results, MaxText's common choice).
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class ScannedBlock(TransformerBlock):
    """A TransformerBlock with nn.scan's (carry, input) -> (carry, output) signature."""

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> tuple[jax.Array, None]:
        return super().__call__(x, key_mask), None


class TransformerStack(nn.Module):
    """`depth` blocks, unrolled (parameters `layer_{i}`) or under nn.scan (parameters stacked along a leading
    `layers` axis in `layers/`: one compiled block, faster compiles for deep towers); optionally rematerialised."""

    depth: int
    num_heads: int
    mlp_dim: int
    pre_norm: bool
    layer_norm_eps: float
    gelu_approximate: bool
    remat: bool = False
    remat_policy: str = "full"
    scan: bool = False
    dtype: Dtype = jnp.float32
    attention_batch_splits: int = 1
    quick_gelu: bool = False
    layer_scale: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        block_args = dict(
            quick_gelu=self.quick_gelu,
            layer_scale=self.layer_scale,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            pre_norm=self.pre_norm,
            layer_norm_eps=self.layer_norm_eps,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
            attention_batch_splits=self.attention_batch_splits,
        )
        block_class = ScannedBlock if self.scan else TransformerBlock
        if self.remat:
            block_class = nn.remat(block_class, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan)
        if self.scan:
            scanned = nn.scan(
                block_class,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=nn.broadcast,
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(**block_args, name="layers")(x, key_mask)
            return x
        for index in range(self.depth):
            x = block_class(**block_args, name=f"layer_{index}")(x, key_mask)
        return x


def unstack_layers(tree: Any) -> Any:
    """Parameters of a scanned stack (`layers/...` with a leading depth axis) -> the unrolled `layer_{i}` layout that
    checkpoint conversion reads; other subtrees are returned as they are."""
    if not isinstance(tree, dict):
        return tree
    result = {}
    for name, value in tree.items():
        if name == "layers" and isinstance(value, dict):
            depth = jax.tree.leaves(value)[0].shape[0]
            for index in range(depth):
                result[f"layer_{index}"] = jax.tree.map(lambda x, i=index: _layer_slice(x, i), value)
        else:
            result[name] = unstack_layers(value)
    return result


def stack_layers(tree: Any) -> Any:
    """Inverse of `unstack_layers`: `layer_{i}` siblings -> one `layers` subtree with a leading depth axis."""
    if not isinstance(tree, dict):
        return tree
    layer_names = sorted((k for k in tree if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))
    result = {name: stack_layers(value) for name, value in tree.items() if name not in layer_names}
    if layer_names:
        result["layers"] = jax.tree.map(_stack_leaves, *(tree[name] for name in layer_names))
    return result


def _layer_slice(leaf, index: int):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[index]


def _stack_leaves(*leaves):
    if isinstance(leaves[0], jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves), *leaves[0].shape), leaves[0].dtype)
    return np.stack([np.asarray(leaf) for leaf in leaves])
