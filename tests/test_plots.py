"""The training figure: every loss term readable on its own scale, the run's rate and schedule, and its evaluation."""

from __future__ import annotations

import json
import os

import matplotlib.image
import pytest

from ela_jax import plots


def write_short_run(workdir: str) -> None:
    """A 30-step run logged every 10 steps, whose FLOPS term is far larger than the others, evaluated at the end."""
    records = [
        {"step": step, "wall_time": 1e9 + step, "loss": 5.0 - step / 30, "loss_global": 3.5 - step / 100,
         "loss_ela": 3.6, "loss_mlm": 4.1, "loss_flops": 17.0 + step / 10, "learning_rate": 1e-5 * step,
         "pairs_per_second": 650.0, "temperature": 0.07, "image_lexicon_nonzeros": 65.0}
        for step in (10, 20, 30)
    ]  # fmt: skip
    records[-1].update(
        {"eval/global/rsum": 57.8, "eval/lexicon/rsum": 28.0, "eval/global/text_retrieval_recall@1": 1.0}
    )
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)


def test_each_loss_term_rate_schedule_and_evaluation_get_a_panel(tmp_path):
    write_short_run(str(tmp_path))
    panels = {panel.title: panel.lines for panel in plots.curve_panels(plots.read_metrics(str(tmp_path)))}
    for term in ("loss_global", "loss_ela", "loss_mlm", "loss_flops"):
        assert [label for label, _, _ in panels[term]] == [term]  # alone on its axis
    assert panels["learning rate"][0][1:] == ([10, 20, 30], pytest.approx([1e-4, 2e-4, 3e-4]))
    assert panels["throughput (pairs/s)"][0][2] == [650.0] * 3
    assert panels["retrieval RSUM (held out)"] == [("global", [30], [57.8]), ("lexicon", [30], [28.0])]
    assert "wall_time" not in str(panels) and "zero-shot top-1 accuracy (%)" not in panels


def test_the_figure_of_a_short_run_is_written(tmp_path):
    write_short_run(str(tmp_path))
    output = plots.training_curves(str(tmp_path), str(tmp_path / "plots" / "training_curves.png"))
    height, width, _ = matplotlib.image.imread(output).shape
    assert (width, height) == (4 * 4 * 90, round(3 * 2.8 * 90))  # 11 panels on a 4-column grid at 90 dpi
