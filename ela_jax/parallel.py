"""Mesh, logical-axis rules, shardings of state and batches, and multi-host initialisation."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ela_jax import config as config_lib
from ela_jax import host_allocator, paths
from ela_jax.errors import ConfigError, DistributedConfigError

# The JAX side applies the host-allocator settings on import, before JAX starts XLA:CPU's threads at its first
# computation (see ela_jax.host_allocator); the package's own import leaves a PyTorch process alone.
host_allocator.configure()

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


# Where the coordinator listens when nothing names a port: SLURM derives one from the job id (as JAX does, so two
# jobs sharing a node differ); a JobSet's headless service needs a fixed one.
SLURM_PORT_RANGE_START, SLURM_PORT_RANGE_SIZE = 61440, 4096
JOBSET_DEFAULT_PORT = 8476


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
    """How this process joins a job: the environment it was found in and the `jax.distributed.initialize` kwargs."""

    environment: str  # "explicit", "slurm", "jobset" or "tpu"
    kwargs: dict


def distributed_setup(
    env: Mapping[str, str],
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    on_tpu_vm: bool = False,
) -> DistributedSetup | None:
    """The multi-process job `env` describes (None: a single process), as `jax.distributed.initialize` kwargs.

    Explicit values (the arguments, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) override what
    SLURM or a Kubernetes JobSet says; TPU pods are left to JAX, which reads the TPU VM metadata itself.
    """
    explicit = {
        "coordinator_address": coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
        "num_processes": num_processes if num_processes is not None else _int_env(env, "JAX_NUM_PROCESSES"),
        "process_id": process_id if process_id is not None else _int_env(env, "JAX_PROCESS_ID"),
    }
    explicit = {key: value for key, value in explicit.items() if value is not None}
    if "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env:
        environment, kwargs = "slurm", _slurm_kwargs(env)
    elif _is_tpu_pod(env, on_tpu_vm) and not explicit:
        return DistributedSetup("tpu", {})
    elif "JOBSET_NAME" in env and "JOB_COMPLETION_INDEX" in env:
        environment, kwargs = "jobset", _jobset_kwargs(env, explicit)
    elif explicit:
        environment, kwargs = "explicit", {}
        if "JAX_LOCAL_DEVICE_IDS" in env:
            kwargs["local_device_ids"] = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    else:
        return None
    kwargs = {**kwargs, **explicit}
    missing = [key for key in ("coordinator_address", "num_processes", "process_id") if key not in kwargs]
    if missing:
        raise DistributedConfigError(
            f"a multi-process job ({environment}) needs {', '.join(missing)}; set JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID (or the --coordinator_address/--num_processes/--process_id flags)"
        )
    if not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
        raise DistributedConfigError(
            f"process id {kwargs['process_id']} is outside the job's {kwargs['num_processes']} processes"
        )
    if kwargs["num_processes"] == 1:
        return None
    # Everything is decided here; JAX's own detection would otherwise pin one GPU per SLURM task.
    return DistributedSetup(environment, {**kwargs, "cluster_detection_method": "deactivate"})


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    if name not in env:
        return None
    try:
        return int(env[name])
    except ValueError:
        raise DistributedConfigError(f"{name}={env[name]!r} is not an integer") from None


def _slurm_kwargs(env: Mapping[str, str]) -> dict:
    """One task per node sees all of the node's GPUs; several tasks per node get one GPU each (SLURM_LOCALID)."""
    num_tasks = _int_env(env, "SLURM_NTASKS") or 1
    num_nodes = _int_env(env, "SLURM_STEP_NUM_NODES") or _int_env(env, "SLURM_NNODES") or 1
    port = env.get("JAX_COORDINATOR_PORT") or SLURM_PORT_RANGE_START + int(env["SLURM_JOB_ID"]) % SLURM_PORT_RANGE_SIZE
    kwargs = {
        "coordinator_address": f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{port}",
        "num_processes": num_tasks,
        "process_id": _int_env(env, "SLURM_PROCID") or 0,
    }
    # A task that SLURM already bound to one GPU (--gpus-per-task=1, --gpu-bind) sees it as its only device.
    already_bound = len([d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]) == 1
    if num_tasks > num_nodes and not already_bound:
        kwargs["local_device_ids"] = [_int_env(env, "SLURM_LOCALID") or 0]
    return kwargs


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'gpu-[003-008,011],cpu1' -> 'gpu-003'."""
    match = re.match(r"([^,\[]+)(?:\[([^,\-\]]+))?", nodelist.strip())
    if match is None:
        raise DistributedConfigError(f"cannot read the first host of SLURM_STEP_NODELIST={nodelist!r}")
    prefix, first_index = match.groups()
    return prefix + (first_index or "")


def _jobset_kwargs(env: Mapping[str, str], explicit: dict) -> dict:
    """Pod i of a JobSet is process i; pod 0 of the replicated job is the coordinator, reached through the JobSet's
    headless service (`<jobset>-<replicated job>-0-0.<subdomain>`). The manifest sets JAX_NUM_PROCESSES."""
    if env.get("JOB_INDEX", "0") != "0" and "process_id" not in explicit:
        raise DistributedConfigError(
            f"JobSet job index {env['JOB_INDEX']}: with several job replicas, set JAX_PROCESS_ID for every pod "
            "(or use one replica whose parallelism is the number of processes)"
        )
    name, job = env["JOBSET_NAME"], env.get("REPLICATED_JOB_NAME", "workers")
    subdomain = env.get("JOBSET_SUBDOMAIN", name)
    port = env.get("JAX_COORDINATOR_PORT", JOBSET_DEFAULT_PORT)
    return {
        "coordinator_address": f"{name}-{job}-0-0.{subdomain}:{port}",
        "process_id": _int_env(env, "JOB_COMPLETION_INDEX"),
    }


def _is_tpu_pod(env: Mapping[str, str], on_tpu_vm: bool) -> bool:
    """GKE names the slice's hosts in the environment; a Cloud TPU VM keeps them in its metadata (JAX reads it)."""
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
    return on_tpu_vm or "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in env


def on_cloud_tpu_vm() -> bool:
    """libtpu is installed and the machine has TPU chips (/dev/accel* on v2-v4 and v5p, /dev/vfio/<n> on v5e/v6e)."""
    has_chips = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    return has_chips and importlib.util.find_spec("libtpu") is not None


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> DistributedSetup | None:
    """Joins JAX's distributed runtime when this process is one of several (TPU pod, SLURM, Kubernetes JobSet, or
    explicit coordinator settings); a single process does nothing. Call it before anything uses a JAX backend."""
    setup = distributed_setup(os.environ, coordinator_address, num_processes, process_id, on_cloud_tpu_vm())
    if setup is None:
        return None
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need a collectives backend
    jax.distributed.initialize(**setup.kwargs)
    return setup


@contextlib.contextmanager
def process_zero_first(name: str, timeout_s: int = 3600):
    """Process 0 runs the block first and the others after it (e.g. preparing a dataset in a shared directory).

    Waits at the distributed runtime's barrier: unlike a collective, it has no start-up deadline (a CPU job's gloo
    context gives peers 30 s to arrive). Process 0 reaches the barrier even when its block fails, so the others
    run theirs and report their own error instead of hanging.
    """
    if jax.process_count() == 1:
        yield
        return
    # The runtime client JAX keeps after jax.distributed.initialize (orbax reaches it the same way).
    client = jax._src.distributed.global_state.client
    barrier = f"process_zero_first:{name}"
    if jax.process_index() == 0:
        try:
            yield
        finally:
            client.wait_at_barrier(barrier, timeout_s * 1000)
    else:
        client.wait_at_barrier(barrier, timeout_s * 1000)
        yield


def create_mesh(mesh_config, devices=None) -> Mesh:
    """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all of this job's). Devices of several TPU slices
    are split over the slices on the outermost batch axis that divides, so only that axis crosses the slower
    data-centre network."""
    devices = jax.devices() if devices is None else list(devices)
    shape = config_lib.resolve_mesh_shape(mesh_config, len(devices))
    slices = len({getattr(device, "slice_index", 0) for device in devices})
    if slices == 1:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES)
    axis = next((i for i in range(2) if shape[i] % slices == 0), None)
    if axis is None:
        raise ConfigError(
            f"{slices} slices: neither mesh.data nor mesh.fsdp ({shape[0]}, {shape[1]}) is a multiple of the number "
            "of slices; set mesh.data to it"
        )
    per_slice, across = list(shape), [1, 1, 1]
    per_slice[axis], across[axis] = shape[axis] // slices, slices
    grid = mesh_utils.create_hybrid_device_mesh(per_slice, across, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES)


def logical_rules(mesh_config) -> tuple[tuple[str, Any], ...]:
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh_config.rules)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
    """The mesh and logical axis rules that the models' activation constraints resolve against while tracing.

    `jax.set_mesh`, not the deprecated `with mesh:`: Flax reads the abstract mesh, which only `set_mesh` sets, so
    under `with mesh:` every `nn.with_logical_constraint` silently does nothing."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


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


def host_tree_to_global(tree: Any, shardings: Any) -> Any:
    """A tree of numpy arrays that every host holds whole (e.g. imported weights) -> global arrays in `shardings`."""
    return jax.tree.map(
        lambda value, sharding: jax.make_array_from_process_local_data(sharding, np.asarray(value), np.shape(value)),
        tree,
        shardings,
    )


def fetch(tree: Any) -> Any:
    """Global arrays -> numpy arrays on every host; arrays that span other processes are all-gathered first."""

    def to_host(value):
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return multihost_utils.process_allgather(value, tiled=True)
        return np.asarray(jax.device_get(value))

    return jax.tree.map(to_host, tree)


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
    # mesh.shape, not its devices: an AbstractMesh (no devices) gives the same report, as the sharding goldens need.
    return {"mesh": {name: int(size) for name, size in mesh.shape.items()}, "parameters": parameters}


def write_sharding_report(path: str, report: dict) -> None:
    paths.write_json(path, report)  # replaced whole: a full disk leaves the previous report, not a cut one
