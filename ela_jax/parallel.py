"""Mesh, logical-axis rules, shardings of state and batches, and multi-host initialisation."""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ela_jax import config as config_lib

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def initialize_distributed() -> None:
    """Joins JAX's distributed runtime when the environment describes a multi-process job.

    TPU pods, SLURM and explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID all go through
    `jax.distributed.initialize`, which reads those environments itself; a single process skips it.
    """
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
    if not (explicit or slurm or tpu_pod):
        return
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()


def create_mesh(mesh_config) -> Mesh:
    shape = config_lib.resolve_mesh_shape(mesh_config, jax.device_count())
    devices = mesh_utils.create_device_mesh(shape, allow_split_physical_axes=True)
    return Mesh(devices, MESH_AXES)


def logical_rules(mesh_config) -> tuple[tuple[str, Any], ...]:
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh_config.rules)


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules) -> Any:
    """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's rows into one global array sharded over the batch axes (no host holds it all)."""
    sharding = batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def sharding_report(mesh: Mesh, param_shardings: Any, abstract_params: Any) -> dict:
    """Mesh shape and, per parameter, its PartitionSpec, global shape and the shape one device stores."""
    parameters = {}
    flat_shardings = jax.tree_util.tree_flatten_with_path(param_shardings)[0]
    flat_shapes = jax.tree_util.tree_leaves(abstract_params)
    for (path, sharding), abstract in zip(flat_shardings, flat_shapes):
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        parameters[name] = {
            "spec": [list(a) if isinstance(a, tuple) else a for a in sharding.spec],
            "shape": list(abstract.shape),
            "per_device_shape": list(sharding.shard_shape(abstract.shape)),
        }
    return {"mesh": dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))), "parameters": parameters}


def write_sharding_report(path: str, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
