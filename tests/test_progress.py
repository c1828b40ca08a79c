"""Progress a log file can read (plain lines, no carriage returns) and TensorBoard events that match metrics.jsonl."""

from __future__ import annotations

import io
import time

from ela_jax.evaluation import evaluators
from ela_jax.training import metrics as metrics_lib
from ela_jax.training.progress import Progress, Throughput
from tests.helpers import read_events


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_steps(stream, steps=range(1, 11), every=5) -> str:
    progress = Progress(total_steps=10, enabled=True, bar=True, stream=stream)
    progress.phase("preparing data")
    progress.start(0)
    for step in steps:
        progress.step_done(step)
        if step % every == 0:
            progress.logged(step, {"loss": 2.5, "learning_rate": 1e-3, "pairs_per_second": 300.0})
    progress.close()
    return stream.getvalue()


def test_a_log_file_gets_one_plain_line_per_logged_step():
    text = run_steps(io.StringIO())
    assert "\r" not in text
    lines = [line.split(" ", 2)[2] for line in text.splitlines()]  # each after its date and time
    assert lines[0] == "[ela_jax] preparing data"
    assert lines[1].startswith("[ela_jax] step 5/10  loss 2.5000  lr 0.001  pairs/s 300.0  eta ")
    assert lines[2].startswith("[ela_jax] step 10/10") and lines[2].endswith("eta 0m00s")
    assert len(lines) == 3


def test_a_terminal_gets_the_bar_and_the_phase_lines_only():
    text = run_steps(Terminal())
    assert "[ela_jax] preparing data" in text
    assert "[ela_jax] step" not in text and "10/10" in text  # the bar's own rendering


def test_only_the_chief_prints():
    assert run_steps(io.StringIO()) and not Progress(10, enabled=False, bar=True, stream=io.StringIO()).plain
    stream = io.StringIO()
    progress = Progress(10, enabled=False, bar=True, stream=stream)
    progress.phase("compiling")
    assert stream.getvalue() == ""


def test_a_resumed_writer_hides_the_events_past_its_checkpoint(tmp_path):
    workdir = str(tmp_path)
    writer = metrics_lib.MetricWriter(workdir, 0)
    for step in range(1, 11):
        writer.write(step, {"loss": float(step)})
    writer.close()
    resumed = metrics_lib.MetricWriter(workdir, resume_step=6)
    resumed.close()
    assert [r["step"] for r in metrics_lib.read_metrics(workdir)] == list(range(1, 7))
    # TensorBoard drops earlier events at steps >= a SessionLog START's step: here 7 onwards, as metrics.jsonl.
    starts = [e.step for e in read_events(workdir) if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [7]
    assert sorted(e.step for e in read_events(workdir) if e.summary.value) == list(range(1, 11))  # none overwritten


def test_the_final_evaluation_joins_the_last_record_and_tensorboard(tmp_path):
    workdir = str(tmp_path)
    writer = metrics_lib.MetricWriter(workdir, 0)
    writer.write(5, {"loss": 1.0})
    writer.close()
    results = {"scores": {"global": {"rsum": 250.0, "image_retrieval_recall@1": 40.0, "mean_rank": 3.0}}}
    for _ in range(2):  # a rerun of the finished run evaluates again: one record of it all the same
        metrics_lib.MetricWriter.final_evaluation(workdir, 5, evaluators.eval_scalars(results))
    scalars = {(v.tag, e.step): v.simple_value for e in read_events(workdir) for v in e.summary.value}
    assert scalars == {
        ("loss", 5): 1.0,
        ("eval/global/rsum", 5): 250.0,
        ("eval/global/image_retrieval_recall_1", 5): 40.0,  # tensorboardX writes "@" in a tag as "_"
    }
    [record] = metrics_lib.read_metrics(workdir)
    assert {k: v for k, v in record.items() if k != "wall_time"} == {
        "step": 5,
        "loss": 1.0,
        "eval/global/rsum": 250.0,
        "eval/global/image_retrieval_recall@1": 40.0,
    }


def test_metric_records_carry_their_wall_time(tmp_path):
    before = time.time()
    writer = metrics_lib.MetricWriter(str(tmp_path), 0)
    writer.write(1, {"loss": 2.0})
    writer.write(2, {"loss": 1.5})
    writer.close()
    times = [record["wall_time"] for record in metrics_lib.read_metrics(str(tmp_path))]
    assert before <= times[0] <= times[1] <= time.time()
    assert not any(v.tag == "wall_time" for e in read_events(str(tmp_path)) for v in e.summary.value)


def test_throughput_leaves_out_the_compiling_step():
    now = [0.0]
    throughput = Throughput(batch_size=32, clock=lambda: now[0])
    now[0] += 100.0  # the first step compiles and runs for 100 s; the loop then restarts the window
    assert throughput.pairs_per_second() is None  # logged at the first step: nothing timed yet
    throughput.restart()
    for _ in range(4):  # steps of 1 s
        now[0] += 1.0
        throughput.step_done()
    assert throughput.pairs_per_second() == 32.0
    now[0] += 2.0
    throughput.step_done()
    assert throughput.pairs_per_second() == 16.0  # the next window starts where the last one was taken


def test_a_logged_step_without_a_rate_prints_a_dash():
    stream = io.StringIO()
    progress = Progress(total_steps=4, enabled=True, bar=True, stream=stream)
    progress.start(0)
    progress.step_done(1)
    progress.logged(1, {"loss": 2.5, "learning_rate": 1e-3})
    assert "step 1/4  loss 2.5000  lr 0.001  pairs/s -" in stream.getvalue()
