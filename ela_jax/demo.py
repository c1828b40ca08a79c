"""python -m ela_jax.demo --workdir W: trains ELA and the CLIP baseline on the embedded world, evaluates both on the
held-out split, prints the retrieval table and writes plots (what `make demo` runs)."""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags

from ela_jax import config as config_lib
from ela_jax import plots
from ela_jax.cli import parse_flags, quiet_libraries
from ela_jax.evaluation import tables
from ela_jax.retrieval import heatmap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"ELA": "configs/demo.py", "CLIP baseline": "configs/clip_baseline.py"}
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where both runs and the plots go.")
_STEPS = flags.DEFINE_integer("steps", 0, "Override total_steps of both runs (0 keeps the configs').")


def load_config_file(path: str):
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, REPO)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv) -> None:
    del argv
    quiet_libraries()
    from ela_jax.training import loop  # imports JAX's backends; the CLI sets logging up first

    results, zeroshot = {}, {}
    for run, config_path in RUNS.items():
        config = load_config_file(os.path.join(REPO, config_path))
        if _STEPS.value:
            config.total_steps = _STEPS.value
        workdir = os.path.join(_WORKDIR.value, run.split()[0].lower())
        print(f"== {run}: {config_path} -> {workdir}", flush=True)
        try:
            results[run] = loop.train(config, workdir)
        except config_lib.ConfigError as error:
            sys.exit(f"config error: {error}")
        if (run_zeroshot := tables.read_zeroshot(workdir, config)) is not None:
            zeroshot[run] = run_zeroshot
    table = tables.results_table(results, zeroshot)
    with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
        f.write(table + "\n")
    plot = plots.compare_runs(results, os.path.join(_WORKDIR.value, "comparison.png"))
    ela_workdir = os.path.join(_WORKDIR.value, "ela")
    heatmaps = heatmap.write_heatmaps(ela_workdir, os.path.join(ela_workdir, "plots"), count=3)
    print(
        f"\nHeld-out retrieval on the embedded world ({results['ELA']['num_images']} images, "
        f"{results['ELA']['num_captions']} captions):\n\n{table}\n\nplots: {plot}, */plots/training_curves.png, "
        f"lexicon-patch heatmaps: {', '.join(heatmaps)}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
