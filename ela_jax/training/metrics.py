"""Metric sinks: `metrics.jsonl` (one object per logged step, with its `wall_time` in Unix seconds), TensorBoard
events and the optional experiment trackers."""

from __future__ import annotations

import json
import os
import sys
import time


class MetricWriter:
    """Appends to metrics.jsonl and TensorBoard. On resume (`resume_step` given, the run's records exist) it drops the
    lines past the restored step and hides the events past it (TensorBoard's purge_step), so neither has duplicates
    of the steps trained again; `resume_step=None` only appends."""

    def __init__(self, workdir: str, resume_step: int | None, enabled: bool = True, trackers=()):
        self.enabled = enabled
        self.trackers = trackers  # training.trackers: they get each record too
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        purge_step = None
        if resume_step is not None and os.path.exists(self.path):
            self._truncate_after(resume_step)
            purge_step = resume_step + 1  # TensorBoard hides earlier files' events at steps >= purge_step
        # Event files are named by the second they were opened in: a suffix keeps a writer opened in the same second as
        # the last one (the final evaluation's, a quick restart's) from overwriting its file.
        self.summary = import_tensorboardx().SummaryWriter(
            os.path.join(workdir, "tensorboard"), purge_step=purge_step, filename_suffix=f".{time.time_ns()}"
        )

    @classmethod
    def final_evaluation(
        cls, workdir: str, step: int, metrics: dict[str, float], enabled: bool = True, trackers=()
    ) -> None:
        """The final evaluation's scalars after the run's writer closed: merged into the record of `step` (the last
        step, always logged) in metrics.jsonl, so a rerun of a finished run replaces them rather than adding a
        second record; and added to TensorBoard and the trackers. Its full record is eval/results.json."""
        writer = cls(workdir, None, enabled, trackers)
        if enabled:
            records = read_metrics(workdir) if os.path.exists(writer.path) else []
            same_step = [record for record in records if record["step"] == step]
            if same_step:
                same_step[-1].update({k: float(v) for k, v in metrics.items()})
            else:
                records.append(writer.record(step, metrics))
            writer._rewrite(records)
            writer.add_scalars(step, metrics)
            for tracker in trackers:
                tracker.log(step, metrics)
        writer.close()

    def _truncate_after(self, step: int) -> None:
        """Keeps the records up to `step`; a line cut short by a killed process is dropped."""
        self._rewrite([record for record in read_metrics(os.path.dirname(self.path)) if record["step"] <= step])

    def _rewrite(self, records: list[dict]) -> None:
        """Replaces metrics.jsonl atomically: a kill mid-write leaves the old file."""
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
        os.replace(temporary, self.path)

    @staticmethod
    def record(step: int, metrics: dict[str, float]) -> dict:
        return {"step": int(step), "wall_time": time.time(), **{k: float(v) for k, v in metrics.items()}}

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(self.record(step, metrics)) + "\n")
        self.add_scalars(step, metrics)
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def add_scalars(self, step: int, metrics: dict[str, float]) -> None:
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
