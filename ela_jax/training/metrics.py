"""Metric sinks: `metrics.jsonl` (one object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
import os
import sys


class MetricWriter:
    """Appends to metrics.jsonl; on resume, drops lines past the restored step so the file has no duplicates."""

    def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        if os.path.exists(self.path):
            self._truncate_after(resume_step)
        self.summary = import_tensorboardx().SummaryWriter(os.path.join(workdir, "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Keeps the records up to `step`; a line cut short by a killed process is dropped. Rewritten atomically."""
        kept = [
            json.dumps(record) + "\n" for record in read_metrics(os.path.dirname(self.path)) if record["step"] <= step
        ]
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            f.writelines(kept)
        os.replace(temporary, self.path)

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


def import_tensorboardx():
    """tensorboardX, imported without PyTorch: it only imports torch to accept torch tensors (we log floats), and that
    import costs seconds at every process start."""
    if "torch" in sys.modules:
        import tensorboardX

        return tensorboardX
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


def read_metrics(workdir: str) -> list[dict]:
    """The records of metrics.jsonl; an unparsable line (a write cut short by a kill) is skipped."""
    records = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
