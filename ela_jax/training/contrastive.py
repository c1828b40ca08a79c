"""Batch-contrastive terms on one device or row-sharded over the mesh's batch axes.

Dense, a contrastive term builds the [B, B] similarity matrix of the global batch. On a mesh with n batch shards
each device instead scores its B/n rows against all B columns (the columns are all-gathered; their gradient is
reduce-scattered back) and the loss combines per-device row and column statistics (`objectives.local_rows_info_nce`):
the largest logits array on a device is [B/n, B], and every negative of the global batch still counts.

SigLIP's sigmoid loss is a sum over pairs with no normalisation across a row or column, so it needs no gathered
columns: the column shards travel round a ring of `ppermute` steps and each device scores its rows against one
shard at a time, [B/n, B/n] logits at most.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from ela_jax import objectives, parallel

# similarity(rows, columns, shared) -> (logits image->text, logits text->image), both [rows, columns].
Similarity = Callable[[Any, Any, Any], tuple[jax.Array, jax.Array]]


class Contrastive:
    """Computes InfoNCE terms densely, or with `shard_map` when `mesh` splits the batch over several devices."""

    def __init__(self, mesh: Mesh | None = None, enabled: bool = True):
        batch_shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        self.mesh = mesh if enabled and batch_shards > 1 else None

    def __call__(self, similarity: Similarity, rows: Any, columns: Any, shared: Any = ()) -> jax.Array:
        """rows / columns: pytrees of global-batch arrays (batch first); shared: small replicated values (scales)."""
        if self.mesh is None:
            return objectives.info_nce(*similarity(rows, columns, shared))
        batch = PartitionSpec(parallel.BATCH_AXES)
        specs = lambda tree, spec: jax.tree.map(lambda _: spec, tree)  # noqa: E731

        def local(rows, columns, shared):
            all_columns = jax.tree.map(lambda x: jax.lax.all_gather(x, parallel.BATCH_AXES, tiled=True), columns)
            return objectives.local_rows_info_nce(*similarity(rows, all_columns, shared), parallel.BATCH_AXES)

        return jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=(specs(rows, batch), specs(columns, batch), specs(shared, PartitionSpec())),
            out_specs=PartitionSpec(),
        )(rows, columns, shared)

    def rowwise(self, function: Callable, rows: tuple, shared: tuple = ()) -> Any:
        """function(*rows, *shared) for a function of each batch row alone (targets from captions, top-k); rows:
        global-batch arrays, shared: small replicated values. On a mesh each device computes its own rows: XLA
        partitions neither a scatter with explicit row indices nor top-k along the batch, and would gather the whole
        [global batch, vocab] arrays onto every chip."""
        if self.mesh is None:
            return function(*rows, *shared)
        batch = PartitionSpec(parallel.BATCH_AXES)
        specs = (batch,) * len(rows) + (PartitionSpec(),) * len(shared)
        return jax.shard_map(function, mesh=self.mesh, in_specs=specs, out_specs=batch)(*rows, *shared)

    def sigmoid(self, similarity: Similarity, rows: Any, columns: Any, shared: Any = ()) -> jax.Array:
        """SigLIP's loss (`objectives.sigmoid_loss`) of similarity(rows, columns, shared)[0], the logits with their
        scale and bias; on a mesh a ring over the batch shards, which never holds more than a [B/n, B/n] block."""
        if self.mesh is None:
            return objectives.sigmoid_loss(similarity(rows, columns, shared)[0])
        batch = PartitionSpec(parallel.BATCH_AXES)
        specs = lambda tree, spec: jax.tree.map(lambda _: spec, tree)  # noqa: E731
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        # Shard i hands its columns to shard i + 1, so after k steps a device holds the columns of shard (i - k) % n.
        ring = [(source, (source + 1) % shards) for source in range(shards)]

        def local(rows, columns, shared):
            block = lambda columns, pairs: objectives.sigmoid_terms(similarity(rows, columns, shared)[0], pairs)  # noqa: E731

            # Rematerialised, so the backward keeps each step's column shard, not its [B/n, B/n] logits.
            @jax.checkpoint
            def step(_, carry):
                columns, total = carry
                columns = jax.tree.map(lambda x: jax.lax.ppermute(x, parallel.BATCH_AXES, ring), columns)
                return columns, total + block(columns, False)

            _, total = jax.lax.fori_loop(1, shards, step, (columns, block(columns, True)))
            rows_here = jax.tree.leaves(rows)[0].shape[0]
            return jax.lax.psum(total, parallel.BATCH_AXES) / jnp.float32(rows_here * shards)

        return jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=(specs(rows, batch), specs(columns, batch), specs(shared, PartitionSpec())),
            out_specs=PartitionSpec(),
        )(rows, columns, shared)
