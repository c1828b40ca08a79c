"""python -m ela_jax.train --config configs/demo.py --workdir W [--config.KEY=VALUE ...]"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from ela_jax import parallel
from ela_jax.cli import parse_flags, quiet_libraries

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; training resumes from its latest checkpoint.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 in a multi-process job (else JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (else JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job (else JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    del argv
    quiet_libraries()
    try:
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except parallel.DistributedConfigError as error:
        sys.exit(f"distributed setup error: {error}")
    # After distributed init: importing JAX backends early is harmless, using them is not.
    from ela_jax.train_errors import train_or_exit

    results = train_or_exit(_CONFIG.value, _WORKDIR.value)
    if "preempted_at_step" in results:
        print(f"preempted at step {results['preempted_at_step']}; checkpoint saved, rerun the same command to resume")
        # A launcher that restarts the job (launch/slurm.sbatch, launch/tpu_queued.sh) tells this exit from a finished
        # run by its status; process 0 alone gives it, once the checkpoint it waited for is committed.
        code = os.environ.get("ELA_JAX_EXIT_CODE_WHEN_PREEMPTED")
        if code and jax.process_index() == 0:
            sys.exit(int(code))
        return
    for score, metrics in results["scores"].items():
        print(
            f"{score}: RSUM {metrics['rsum']:.1f}  I->T R@1 {metrics['text_retrieval_recall@1']:.1f}  "
            f"T->I R@1 {metrics['image_retrieval_recall@1']:.1f}"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
