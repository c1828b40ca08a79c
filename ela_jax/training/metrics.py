"""Metric sinks: `metrics.jsonl` (one object per logged step, with its `wall_time` in Unix seconds), TensorBoard
events and the optional experiment trackers.

In a workdir on object storage, where nothing appends, the records are one object each under `metrics.jsonl.d/`
(named by step, so a listing is in step order) and `read_metrics` merges them: a kill loses no written record and
leaves no cut line. TensorBoard's event file there is rewritten whole at each flush.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time

from etils import epath

from ela_jax import paths

log = logging.getLogger(__name__)

RECORDS_FOLDER = "metrics.jsonl.d"  # beside metrics.jsonl, in workdirs on object storage
_RECORD_NAME = re.compile(r"^(\d+)-\d+\.json$")


class MetricWriter:
    """Appends to metrics.jsonl and TensorBoard. On resume (`resume_step` given, the run's records exist) it drops the
    lines past the restored step and hides the events past it (TensorBoard's purge_step), so neither has duplicates
    of the steps trained again; `resume_step=None` only appends."""

    def __init__(self, workdir: str, resume_step: int | None, enabled: bool = True, trackers=()):
        self.enabled = enabled
        self.trackers = trackers  # training.trackers: they get each record too
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.remote = paths.is_remote(workdir)
        if not enabled:
            return
        purge_step = None
        if resume_step is not None and self.remote:
            for step, record_path in record_objects(workdir):
                if step > resume_step:
                    record_path.unlink(missing_ok=True)
            purge_step = resume_step + 1
        elif resume_step is not None and os.path.exists(self.path):
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
        if enabled and writer.remote:
            writer._merge_into_record_object(step, metrics)
            writer.add_scalars(step, metrics)
            for tracker in trackers:
                tracker.log(step, metrics)
        elif enabled:
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

    def _merge_into_record_object(self, step: int, metrics: dict[str, float]) -> None:
        """The remote form of the merge: the step's last record object is replaced whole (one write, atomic)."""
        workdir = os.path.dirname(self.path)
        same_step = [path for saved_step, path in record_objects(workdir) if saved_step == step]
        if not same_step:
            self._write_record_object(self.record(step, metrics))
            return
        record = json.loads(same_step[-1].read_text())
        record.update({k: float(v) for k, v in metrics.items()})
        same_step[-1].write_text(json.dumps(record) + "\n")

    def _write_record_object(self, record: dict) -> None:
        name = f"{record['step']:010d}-{time.time_ns()}.json"
        paths.write_text(os.path.join(os.path.dirname(self.path), RECORDS_FOLDER, name), json.dumps(record) + "\n")

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
        if self.remote:
            self._write_record_object(self.record(step, metrics))
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps(self.record(step, metrics)) + "\n")
        self.add_scalars(step, metrics)
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def add_scalars(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.summary.add_scalar(name, float(value), step)

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            self.summary.close()
        except OSError as error:
            if not self.remote:
                raise
            # An unreachable store: the run's own error (a failed save, a failed record) is the one to report.
            log.warning("TensorBoard events in %s could not be flushed (%s)", os.path.dirname(self.path), error)


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
    for scheme in REMOTE_EVENT_SCHEMES:
        tensorboardX.record_writer.register_writer_factory(scheme, WholeObjectWriterFactory())
    return tensorboardX


# tensorboardX's own gs:// writer goes through google-cloud-storage's client and credentials; this one goes through
# the same path layer as every other output of the run.
REMOTE_EVENT_SCHEMES = ("gs", "s3")


class WholeObjectWriter:
    """An event file on object storage: kept in memory, and written whole (one object) at each flush."""

    def __init__(self, path: str):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        paths.write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class WholeObjectWriterFactory:
    def open(self, path: str) -> WholeObjectWriter:
        return WholeObjectWriter(path)

    def directory_check(self, path: str) -> None:
        del path  # object stores have no folders to create


def read_metrics(workdir: str) -> list[dict]:
    """The records of metrics.jsonl, then those of metrics.jsonl.d/ (a workdir on object storage); an unparsable line
    (a write cut short by a kill) is skipped. FileNotFoundError when the workdir has neither."""
    lines = []
    local_file = os.path.join(workdir, "metrics.jsonl")
    if paths.exists(local_file) or not paths.is_remote(workdir):
        lines += paths.read_text(local_file).splitlines()
    for _, path in record_objects(workdir) if paths.is_remote(workdir) else ():
        lines += path.read_text().splitlines()
    if paths.is_remote(workdir) and not lines and not paths.exists(local_file):
        raise FileNotFoundError(f"{workdir} holds no metrics.jsonl nor {RECORDS_FOLDER}/")
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def record_objects(workdir: str) -> list[tuple[int, epath.Path]]:
    """(step, path) of each record object under workdir/metrics.jsonl.d/, in the order they were written."""
    folder = epath.Path(workdir) / RECORDS_FOLDER
    if not folder.exists():
        return []
    named = [(_RECORD_NAME.match(path.name), path) for path in folder.iterdir()]
    return sorted(((int(match[1]), path) for match, path in named if match), key=lambda item: (item[0], item[1].name))
