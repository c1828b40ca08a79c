"""How a process finds its multi-process job: one environment kind per test, parsed into jax.distributed kwargs."""

from __future__ import annotations

import pytest

from ela_jax.parallel import DistributedConfigError, distributed_setup, first_slurm_host

# JAX's own detection is switched off whenever the kwargs are complete, so it cannot second-guess them.
DECIDED = {"cluster_detection_method": "deactivate"}


def test_a_single_process_joins_no_job():
    assert distributed_setup({"HOME": "/root", "PATH": "/bin"}) is None
    assert (
        distributed_setup({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is None
    )
    slurm_single_task = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    assert distributed_setup(slurm_single_task) is None


def test_explicit_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    setup = distributed_setup(env)
    assert setup.environment == "explicit"
    assert setup.kwargs == {"coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3, **DECIDED}
    with_devices = distributed_setup({**env, "JAX_LOCAL_DEVICE_IDS": "2,3"})
    assert with_devices.kwargs["local_device_ids"] == [2, 3]


def test_explicit_flags_override_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "a:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    setup = distributed_setup(env, coordinator_address="b:2", num_processes=2, process_id=0)
    assert setup.kwargs == {"coordinator_address": "b:2", "num_processes": 2, "process_id": 0, **DECIDED}
    from_flags_only = distributed_setup({}, coordinator_address="b:2", num_processes=2, process_id=1)
    assert from_flags_only.environment == "explicit" and from_flags_only.kwargs["process_id"] == 1


def test_an_incomplete_explicit_job_is_a_clear_error():
    with pytest.raises(DistributedConfigError, match="needs num_processes, process_id"):
        distributed_setup({"JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(DistributedConfigError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed_setup({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})
    with pytest.raises(DistributedConfigError, match="process id 2 is outside the job's 2 processes"):
        distributed_setup({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})


SLURM_TWO_NODES = {
    "SLURM_JOB_ID": "4097",
    "SLURM_STEP_NODELIST": "gpu-[003-004]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def test_slurm_one_process_per_node_sees_all_local_gpus():
    setup = distributed_setup(SLURM_TWO_NODES)
    assert setup.environment == "slurm"
    # The port comes from the job id (61440 + 4097 % 4096), so every task computes the same address.
    assert setup.kwargs == {"coordinator_address": "gpu-003:61441", "num_processes": 2, "process_id": 1, **DECIDED}


def test_slurm_one_process_per_gpu_pins_its_local_gpu():
    env = {**SLURM_TWO_NODES, "SLURM_NTASKS": "16", "SLURM_PROCID": "13", "SLURM_LOCALID": "5"}
    env["CUDA_VISIBLE_DEVICES"] = "0,1,2,3,4,5,6,7"
    setup = distributed_setup({**env, "JAX_COORDINATOR_PORT": "5000"})
    assert setup.kwargs == {
        "coordinator_address": "gpu-003:5000",
        "num_processes": 16,
        "process_id": 13,
        "local_device_ids": [5],
        **DECIDED,
    }
    # A task that SLURM already bound to one GPU (--gpus-per-task=1) sees only that one, as device 0.
    bound = distributed_setup({**env, "CUDA_VISIBLE_DEVICES": "5"})
    assert "local_device_ids" not in bound.kwargs


@pytest.mark.parametrize(
    "nodelist, first",
    [("node7", "node7"), ("node7,other2", "node7"), ("n[01-04]", "n01"), ("gpu-a[009,011-012],b1", "gpu-a009")],
)
def test_the_first_slurm_host_is_the_coordinator(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_kubernetes_jobset_pod_zero_is_the_coordinator():
    env = {
        "JOBSET_NAME": "ela",
        "REPLICATED_JOB_NAME": "workers",
        "JOB_INDEX": "0",
        "JOB_COMPLETION_INDEX": "2",
        "JAX_NUM_PROCESSES": "4",
    }
    setup = distributed_setup(env)
    assert setup.environment == "jobset"
    assert setup.kwargs == {
        "coordinator_address": "ela-workers-0-0.ela:8476",
        "num_processes": 4,
        "process_id": 2,
        **DECIDED,
    }
    with pytest.raises(DistributedConfigError, match="needs num_processes"):
        distributed_setup({k: v for k, v in env.items() if k != "JAX_NUM_PROCESSES"})
    with pytest.raises(DistributedConfigError, match="several job replicas"):
        distributed_setup({**env, "JOB_INDEX": "1"})


def test_tpu_pods_are_left_to_jax():
    gke = {"TPU_WORKER_HOSTNAMES": "t-0.svc,t-1.svc,t-2.svc,t-3.svc", "TPU_WORKER_ID": "2", "JOBSET_NAME": "ela"}
    setup = distributed_setup(gke)
    assert setup.environment == "tpu" and setup.kwargs == {}  # jax.distributed.initialize() reads the rest
    assert distributed_setup({}, on_tpu_vm=True).environment == "tpu"  # Cloud TPU VM: JAX asks the metadata server
    assert distributed_setup({"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # a single host
