"""What a run writes into a local workdir, timed on two checkouts (before / after a change to the path layer): a
metrics record, config.json, and an orbax checkpoint (save until committed) of a train-state-sized pytree. Each
checkout runs in its own process, alternating, several rounds; the spread of one checkout's rounds is the noise floor.

Run: python benchmarks/local_workdir.py --before /path/to/main --after . [--rounds 5] [--smoke]
Writes benchmarks/results/local_workdir.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run inside each checkout's process: its ela_jax is first on sys.path.
MEASURE = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import jax.numpy as jnp
import numpy as np
import ela_jax
from ela_jax import paths
from ela_jax.training.checkpoint import Checkpointer
from ela_jax.training.metrics import MetricWriter

records, checkpoints, megabytes = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
workdir = tempfile.mkdtemp(prefix="ela_bench_")
writer = MetricWriter(workdir, None)
metrics = {f"loss/{i}": 0.5 for i in range(12)}
start = time.perf_counter()
for step in range(records):
    writer.write(step, metrics)
record_s = (time.perf_counter() - start) / records
writer.close()
start = time.perf_counter()
for _ in range(records):
    paths.write_text(os.path.join(workdir, "config.json"), json.dumps(metrics))
config_s = (time.perf_counter() - start) / records
state = {f"w{i}": jnp.asarray(np.random.rand(int(megabytes * 2**20 / 4 / 8)), jnp.float32) for i in range(8)}
checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
times = []
for step in range(1, checkpoints + 1):
    start = time.perf_counter()
    checkpointer.save(step, state)
    checkpointer.manager.wait_until_finished()
    times.append(time.perf_counter() - start)
checkpointer.close()
print(json.dumps({"ela_jax": os.path.dirname(ela_jax.__file__), "record_s": record_s, "config_s": config_s,
                  "checkpoint_s": sorted(times)[len(times) // 2]}))
"""


def measure(tree: str, records: int, checkpoints: int, megabytes: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, os.path.abspath(tree), str(records), str(checkpoints), str(megabytes)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout before the change")
    parser.add_argument("--after", default=REPO, help="checkout after the change")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one quick round")
    args = parser.parse_args()
    rounds, records, checkpoints, megabytes = (1, 20, 2, 1.0) if args.smoke else (args.rounds, 500, 7, 32.0)
    runs = {"before": [], "after": []}
    for _ in range(rounds):
        for name in runs:
            runs[name].append(measure(getattr(args, name), records, checkpoints, megabytes))
    table = {}
    for key in ("record_s", "config_s", "checkpoint_s"):
        row = {}
        for name, results in runs.items():
            values = [result[key] for result in results]
            row[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        row["after/before"] = row["after"]["median"] / row["before"]["median"]
        table[key] = row
        print(
            f"{key:13s} before {row['before']['median'] * 1e3:8.3f} ms  after {row['after']['median'] * 1e3:8.3f} ms"
            f"  ratio {row['after/before']:.3f}  (before's rounds {row['before']['min'] * 1e3:.3f}-"
            f"{row['before']['max'] * 1e3:.3f} ms)"
        )
    report = {
        "what": "per metrics record, per config.json write, per checkpoint save until committed (8 arrays, "
        f"{megabytes:g} MB in all), local workdir on this machine's disk; medians over {rounds} alternating rounds",
        "before": runs["before"][0]["ela_jax"],
        "after": runs["after"][0]["ela_jax"],
        "load_average": os.getloadavg(),
        "table": table,
        "rounds": runs,
    }
    if not args.smoke:
        with open(os.path.join(REPO, "benchmarks", "results", "local_workdir.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
