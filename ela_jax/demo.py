"""python -m ela_jax.demo --workdir W: trains ELA and the CLIP baseline on the embedded world, evaluates both on the
held-out split, prints the retrieval table and writes plots (what `make demo` runs)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from absl import app, flags

from ela_jax import config as config_lib
from ela_jax import plots
from ela_jax.cli import parse_flags, quiet_libraries
from ela_jax.evaluation import evaluators
from ela_jax.retrieval import heatmap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"ELA": "configs/demo.py", "CLIP baseline": "configs/clip_baseline.py"}
COLUMNS = [
    ("text_retrieval_recall@1", "I->T R@1"),
    ("text_retrieval_recall@5", "R@5"),
    ("text_retrieval_recall@10", "R@10"),
    ("image_retrieval_recall@1", "T->I R@1"),
    ("image_retrieval_recall@5", "R@5"),
    ("image_retrieval_recall@10", "R@10"),
    ("rsum", "RSUM"),
]

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where both runs and the plots go.")
_STEPS = flags.DEFINE_integer("steps", 0, "Override total_steps of both runs (0 keeps the configs').")


def load_config_file(path: str):
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, REPO)
    spec.loader.exec_module(module)
    return module.get_config()


def results_table(results: dict[str, dict], zeroshot: dict[str, dict] | None = None) -> str:
    """Markdown table, one row per (run, score); `zeroshot[run]` (a zero-shot evaluator's output) adds its acc@1
    for the same score, or "–" where that run has none."""
    zeroshot = zeroshot or {}
    zeroshot_label = next((f"{out['dataset']} acc@1" for out in zeroshot.values()), None)
    labels = [label for _, label in COLUMNS] + ([zeroshot_label] if zeroshot_label else [])
    lines = ["| run | score | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 2)]
    for run, result in results.items():
        for score, metrics in result["scores"].items():
            cells = [f"{metrics[key]:.1f}" for key, _ in COLUMNS]
            if zeroshot_label:
                run_zeroshot = zeroshot.get(run, {}).get("scores", {}).get(score)
                cells.append(f"{run_zeroshot['acc1']:.1f}" if run_zeroshot else "–")
            lines.append(f"| {run} | {score} | {' | '.join(cells)} |")
    return "\n".join(lines)


def read_zeroshot(workdir: str, config) -> dict | None:
    """The zero-shot evaluator's output of a finished run, if the config runs it."""
    if "zeroshot" not in config.evals or not config.evals.zeroshot.during_training:
        return None
    path = os.path.join(
        workdir, "eval", evaluators.keyed_file("zeroshot", config.eval.zeroshot.dataset, config.eval.zeroshot.split)
    )
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


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
        if (run_zeroshot := read_zeroshot(workdir, config)) is not None:
            zeroshot[run] = run_zeroshot
    table = results_table(results, zeroshot)
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
