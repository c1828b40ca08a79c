"""Pictures people would rather see than read: training curves and the demo's comparison."""

from __future__ import annotations

import dataclasses
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from ela_jax import paths  # noqa: E402
from ela_jax.training.metrics import read_metrics  # noqa: E402


@dataclasses.dataclass
class Panel:
    """One small plot of the training figure: a title and its (label, steps, values) lines, on its own y scale."""

    title: str
    lines: list[tuple[str, list[int], list[float]]]


def curve_panels(records: list[dict]) -> list[Panel]:
    """The panels of `training_curves` from metrics.jsonl's records: the total loss and each loss term apart (a term
    ten times the others would flatten them on a shared axis), learning rate, throughput, temperature, gradient
    norm, lexicon sparsity, then one panel per evaluation measure with a line per score."""
    training = [r for r in records if "loss" in r]

    def series(key: str, rows: list[dict]) -> tuple[list[int], list[float]]:
        kept = [r for r in rows if key in r]
        return [r["step"] for r in kept], [r[key] for r in kept]

    keys = {k for r in training for k in r}
    terms = sorted(k for k in keys if k.startswith("loss_"))
    panels = [Panel("loss (total)", [("loss", *series("loss", training))])]
    panels += [Panel(term, [(term, *series(term, training))]) for term in terms]
    for key, title in TRAINING_PANELS:
        if key in keys:
            panels.append(Panel(title, [(key, *series(key, training))]))
    nonzeros = sorted(k for k in keys if k.endswith("_lexicon_nonzeros"))
    if nonzeros:
        panels.append(Panel("lexicon nonzeros", [(k.split("_")[0], *series(k, training)) for k in nonzeros]))
    evaluated = sorted({k for r in records for k in r if k.startswith("eval/")})
    for measure, title in EVALUATION_PANELS:
        named = [k for k in evaluated if k.rsplit("/", 1)[1] == measure]
        if named:
            lines = [(k[len("eval/") : -len(measure) - 1], *series(k, records)) for k in named]
            panels.append(Panel(title, lines))
    return panels


TRAINING_PANELS = (
    ("learning_rate", "learning rate"),
    ("pairs_per_second", "throughput (pairs/s)"),
    ("temperature", "global temperature"),
    ("grad_norm", "gradient norm"),
)
EVALUATION_PANELS = (("rsum", "retrieval RSUM (held out)"), ("acc1", "zero-shot top-1 accuracy (%)"))


def training_curves(workdir: str, output: str, columns: int = 4) -> str:
    """metrics.jsonl as a grid of panels (see `curve_panels`). A run logged at few steps gets its points marked,
    and an evaluation run once (at the end) its value written beside the point."""
    panels = curve_panels(read_metrics(workdir))
    steps_seen = [step for panel in panels for _, steps, _ in panel.lines for step in steps] or [0]
    pad = max(1, (max(steps_seen) - min(steps_seen)) // 20)
    span = (min(steps_seen) - pad, max(steps_seen) + pad)  # every panel on one step axis, a lone point included
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for panel, ax in zip(panels, axes.flat):
        for label, steps, values in panel.lines:
            few = len(steps) <= 30
            ax.plot(steps, values, marker="o" if few else None, markersize=3, label=label)
            if len(steps) == 1:
                ax.annotate(
                    f"{values[0]:.4g}", (steps[0], values[0]), textcoords="offset points", xytext=(-6, 4), ha="right"
                )
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlim(*span)
        ax.margins(y=0.15)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, nbins=5))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("step", fontsize=8)
        if len(panel.lines) > 1:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(os.path.basename(paths.absolute(workdir).rstrip("/")))
    figure.tight_layout()
    save(figure, output, dpi=90)
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
    save(figure, output, dpi=110)
    return output


def save(figure, output: str, dpi: int) -> None:
    """Saves and closes `figure`; rendered in memory and written as one object, so `output` may be a URL."""
    image = io.BytesIO()
    figure.savefig(image, dpi=dpi, format=os.path.splitext(output)[1][1:] or "png")
    plt.close(figure)
    paths.write_bytes(output, image.getvalue())
