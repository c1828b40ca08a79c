"""Markdown tables of finished runs: held-out retrieval per (run, score), with a zero-shot column where runs have one."""

from __future__ import annotations

import json
import os

from ela_jax.evaluation import evaluators

COLUMNS = [
    ("text_retrieval_recall@1", "I->T R@1"),
    ("text_retrieval_recall@5", "R@5"),
    ("text_retrieval_recall@10", "R@10"),
    ("image_retrieval_recall@1", "T->I R@1"),
    ("image_retrieval_recall@5", "R@5"),
    ("image_retrieval_recall@10", "R@10"),
    ("rsum", "RSUM"),
]


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
