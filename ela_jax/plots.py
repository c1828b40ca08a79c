"""Pictures people would rather see than read: training curves and the demo's comparison."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ela_jax.training.metrics import read_metrics  # noqa: E402


def training_curves(workdir: str, output: str) -> str:
    """Total and per-term losses, and the global temperature, against step."""
    records = [r for r in read_metrics(workdir) if "loss" in r]
    steps = [r["step"] for r in records]
    loss_names = sorted({k for r in records for k in r if k.startswith("loss")})
    figure, (losses, temperature) = plt.subplots(1, 2, figsize=(11, 4))
    for name in loss_names:
        losses.plot(steps, [r.get(name, float("nan")) for r in records], label=name)
    losses.set_xlabel("step")
    losses.set_yscale("log")
    losses.set_title("training losses")
    losses.legend(fontsize=8)
    temperature.plot(steps, [r["temperature"] for r in records], color="black")
    temperature.set_xlabel("step")
    temperature.set_title("global temperature")
    figure.suptitle(os.path.basename(os.path.abspath(workdir)))
    figure.tight_layout()
    os.makedirs(os.path.dirname(output), exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def compare_runs(results: dict[str, dict], output: str, score: str = "global") -> str:
    """Grouped bars of R@1/5/10 both ways for each named run's final results."""
    keys = [f"{d}_retrieval_recall@{k}" for d in ("text", "image") for k in (1, 5, 10)]
    labels = [f"{'I->T' if k.startswith('text') else 'T->I'} R@{k.split('@')[1]}" for k in keys]
    figure, axes = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(results), 1)
    for index, (name, result) in enumerate(results.items()):
        metrics = result["scores"][score]
        positions = [i + index * width for i in range(len(keys))]
        axes.bar(positions, [metrics[k] for k in keys], width, label=f"{name} (RSUM {metrics['rsum']:.1f})")
    axes.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(keys))], labels)
    axes.set_ylabel("recall (%)")
    axes.set_title(f"held-out retrieval, {score} score")
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(output), exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
