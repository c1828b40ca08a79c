"""What the trainer tells a person: a tqdm bar on a terminal; plain lines where stderr is a file (SLURM, TPU VMs and
Kubernetes keep it as a log, in which a bar's carriage returns pack every update into one unreadable line)."""

from __future__ import annotations

import sys
import time

import tqdm

from ela_jax import logs


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Throughput:
    """Pairs per second over the steps since the last logged one. The loop restarts the window once the first step
    of a run has finished: compiling it and its first execution (buffers allocated, threads started) are not timed,
    and that step is not counted."""

    def __init__(self, batch_size: int, clock=time.perf_counter):
        self.batch_size = batch_size
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = self.clock(), 0

    def step_done(self) -> None:
        self.steps += 1

    def pairs_per_second(self) -> float | None:
        """The window's rate (None when it holds no timed step); the next window starts now."""
        now = self.clock()
        rate = self.steps * self.batch_size / max(now - self.start, 1e-9) if self.steps else None
        self.start, self.steps = now, 0
        return rate


class Progress:
    """Step progress and phase lines ("compiling", "evaluating", ...) on `stream`, from the chief process only.

    On a terminal the bar shows when `bar` (config.log.progress); elsewhere every logged step prints one line with
    step, loss, learning rate, pairs/s and the time left, estimated from the steps since the first one (which
    compiles)."""

    def __init__(self, total_steps: int, enabled: bool, bar: bool, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total_steps = total_steps
        self.plain = enabled and not self.stream.isatty()
        self.show_bar = enabled and bar and not self.plain
        self.bar = tqdm.tqdm(disable=True)  # replaced by start(), once the first step is known
        self.timed_from: tuple[int, float] | None = None  # (step, time) once the first step has run

    def start(self, start_step: int) -> None:
        self.bar = tqdm.tqdm(
            initial=start_step,
            total=self.total_steps,
            desc="train",
            unit="step",
            disable=not self.show_bar,
            dynamic_ncols=True,
            file=self.stream,
        )

    def phase(self, message: str) -> None:
        if self.enabled:
            self.bar.write(logs.line(message), file=self.stream)
            self.stream.flush()

    def step_done(self, step: int) -> None:
        if self.timed_from is None:
            self.timed_from = (step, time.perf_counter())
        self.bar.update(1)

    def logged(self, step: int, metrics: dict[str, float]) -> None:
        """A logged step's line (plain) or the bar's postfix (terminal)."""
        rate = metrics.get("pairs_per_second")  # absent where the window held only the compiling step
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", pairs_s="-" if rate is None else f"{rate:.0f}")
        if not self.plain:
            return
        fields = [
            f"step {step}/{self.total_steps}",
            f"loss {metrics['loss']:.4f}",
            f"lr {metrics['learning_rate']:.3g}",
            f"pairs/s {'-' if rate is None else f'{rate:.1f}'}",
        ]
        eta = self.eta_seconds(step)
        if eta is not None:
            fields.append(f"eta {_duration(eta)}")
        self.phase("  ".join(fields))

    def eta_seconds(self, step: int) -> float | None:
        if self.timed_from is None or step <= self.timed_from[0]:
            return None
        first_step, first_time = self.timed_from
        per_step = (time.perf_counter() - first_time) / (step - first_step)
        return per_step * (self.total_steps - step)

    def close(self) -> None:
        self.bar.close()
