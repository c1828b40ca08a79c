"""Metric sinks: `metrics.jsonl` (one object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
import os

import tensorboardX


class MetricWriter:
    """Appends to metrics.jsonl; on resume, drops lines past the restored step so the file has no duplicates."""

    def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        if os.path.exists(self.path):
            self._truncate_after(resume_step)
        self.summary = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            self.summary.add_scalar(name, float(value), step)

    def close(self) -> None:
        if self.enabled:
            self.summary.close()


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
