"""The README's scale-out commands on this machine: the demo config trained by one process, by two processes joined
through `launch.local`, and by two processes with the `:dp` preset. Each run trains a few steps on a small world;
steady-state throughput is the median of metrics.jsonl's `pairs_per_second` over the logged windows after the first
(the first holds the compilation).

Run: python benchmarks/launch_local.py [--steps 30] [--every 5] [--smoke]
Writes benchmarks/results/launch_local.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common

RUNS = {
    "1 process": [],
    "launch.local --processes 2": [sys.executable, "-m", "launch.local", "--processes", "2", "--"],
    "launch.local --processes 2, :dp": [sys.executable, "-m", "launch.local", "--processes", "2", "--"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--every", type=int, default=5, help="log.every_steps: one throughput window per N steps")
    parser.add_argument("--smoke", action="store_true", help="4 steps: checks the code path")
    parser.add_argument("--output", default="", help="JSON path")
    return parser.parse_args(argv)


def train_command(name: str, workdir: str, steps: int, every: int) -> list[str]:
    config = "configs/demo.py:dp" if name.endswith(":dp") else "configs/demo.py"
    overrides = {
        "total_steps": steps,
        "log.every_steps": every,
        "log.progress": False,
        "checkpoint.every_steps": 0,
        "data.num_train": 1024,
        "data.num_test": 128,
    }
    flags = [f"--config.{key}={value}" for key, value in overrides.items()]
    return [*RUNS[name], sys.executable, "-m", "ela_jax.train", "--config", config, "--workdir", workdir, *flags]


def run(name: str, steps: int, every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ela_launch_") as workdir:
        start = time.perf_counter()
        done = subprocess.run(
            train_command(name, workdir, steps, every), cwd=common.REPO, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            windows = [record["pairs_per_second"] for record in map(json.loads, f) if "pairs_per_second" in record]
    steady = windows[1:] or windows
    return {
        "wall_seconds": wall,
        "pairs_per_second_windows": windows,
        "pairs_per_second": statistics.median(steady),
        "switched_off_line": "attention_batch_splits=8 switched off" in done.stdout + done.stderr,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    steps, every = (4, 2) if args.smoke else (args.steps, args.every)
    results = {name: run(name, steps, every) for name in RUNS}
    payload = {
        "steps": steps,
        "log_every_steps": every,
        "batch_size": 128,
        "runs": results,
        "machine": common.machine(),
    }
    path = common.write_results("launch_local_smoke" if args.smoke else "launch_local", payload, args.output or None)
    common.print_table(
        ["run", "pairs/s (steady)", "wall s", "switched off"],
        [[name, r["pairs_per_second"], r["wall_seconds"], r["switched_off_line"]] for name, r in results.items()],
    )
    print(path)
    return payload


if __name__ == "__main__":
    main()
