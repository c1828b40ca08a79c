"""A `jax.profiler` trace of a few training steps (`log.profile_steps`) into W/profile, for TensorBoard's profile tab
(pip install 'ela_jax[tensorboard]') or Perfetto."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import jax

from ela_jax import paths

log = logging.getLogger(__name__)


class StepTrace:
    """Traces steps `first` .. `first + count - 1`; `first` defaults (0) to the first step after the one that
    compiles, whose compilation would fill the trace. Every process traces its own devices."""

    def __init__(self, workdir: str, count: int, first: int, start_step: int):
        first = first or start_step + 2
        self.steps = range(first, first + count)
        self.directory = os.path.join(workdir, "profile")
        if count and paths.is_remote(workdir):  # the profiler writes through the local file system only
            self.directory = tempfile.mkdtemp(prefix="ela_jax_profile_")
            log.warning("the workdir is a URL: the profile goes to %s on this host", self.directory)
        self.tracing = False

    @contextlib.contextmanager
    def step(self, step: int):
        """Around one step's call: starts the trace at the first traced step and names each traced step for the
        profiler's step view."""
        if step not in self.steps:
            yield
            return
        if step == self.steps.start:
            jax.profiler.start_trace(self.directory)
            self.tracing = True
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            yield

    def step_done(self, step: int, outputs) -> bool:
        """Stops the trace after the last traced step, once its `outputs` are computed; True when it did."""
        if not (self.tracing and step == self.steps[-1]):
            return False
        jax.block_until_ready(outputs)
        self.close()
        return True

    def close(self) -> None:
        """Ends a trace still open (the run ended or failed inside the traced steps)."""
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False
