"""The jitted train step compiles on the first step and never again: every later batch from the input pipeline has
the same shapes, dtypes and shardings, and the donated state comes back with the same ones."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax._src import dispatch

from ela_jax import parallel
from ela_jax.data import pipeline
from ela_jax.experiment import Experiment
from tests.helpers import make_tiny_config


class CompileCounter:
    """Names of the functions JAX traces (a jit cache miss) and XLA compiles while active, from JAX's monitoring
    events."""

    def __init__(self):
        self.traced: list[str] = []
        self.compiled: list[str] = []

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        del duration
        if event == dispatch.JAXPR_TRACE_EVENT:
            self.traced.append(kwargs.get("fun_name", "?"))
        if event == dispatch.BACKEND_COMPILE_EVENT:
            self.compiled.append(kwargs.get("fun_name", "?"))

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


# "pallas" runs the argmax custom VJP too (with the fused forward), so the pure-XLA "argmax" is left to the slow run.
@pytest.fixture(scope="module", params=["chunked", pytest.param("argmax", marks=pytest.mark.slow), "pallas"])
def jitted_step(tmp_path_factory, request):
    """The train step the loop runs (`Experiment.train_step`), a state factory, and batches from the real pipeline;
    once per lexicon impl (Pallas in interpret mode on CPU)."""
    lexicon = {"model.lexicon.impl": request.param, "model.lexicon.chunk": 16, "model.lexicon.pallas_interpret": True}
    config = make_tiny_config(**{"batch_size": 16, **lexicon})
    experiment = Experiment.build(config, str(tmp_path_factory.mktemp("compile")))
    config = experiment.config
    factory = experiment.state_factory()
    mesh = experiment.mesh
    train_step = experiment.train_step(factory)
    stream = iter(pipeline.train_dataset(config, experiment.tokenizer, 0, 1))
    host_batches = [next(stream) for _ in range(4)]
    return train_step, factory, host_batches, mesh, parallel.logical_rules(config.mesh)


def run_steps(jitted_step, state, host_batches) -> tuple:
    train_step, _, _, mesh, rules = jitted_step
    losses = []
    for host_batch in host_batches:
        batch = parallel.host_batch_to_global(host_batch, mesh)
        with parallel.sharding_context(mesh, rules):
            state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.integration
def test_train_step_compiles_once_and_never_after_the_first_step(jitted_step):
    train_step, factory, host_batches, _, _ = jitted_step
    state = factory.create(0)
    with CompileCounter() as first:
        state, _ = run_steps(jitted_step, state, host_batches[:1])
    cached_after_first = train_step._cache_size()
    with CompileCounter() as later:
        state, losses = run_steps(jitted_step, state, host_batches[1:])
    assert any("train_step" in name for name in first.compiled), first.compiled
    assert later.traced == [] and later.compiled == [], f"retraced or recompiled after step 1: {later.__dict__}"
    assert train_step._cache_size() == cached_after_first
    assert int(state.step) == len(host_batches) and np.all(np.isfinite(losses))


@pytest.mark.integration
def test_compile_counter_sees_a_new_batch_shape(jitted_step):
    """The counter is not blind: a batch of another size makes the step trace again (lowered only, not compiled)."""
    train_step, factory, host_batches, mesh, rules = jitted_step
    smaller = {key: jax.ShapeDtypeStruct((8, *value.shape[1:]), value.dtype) for key, value in host_batches[0].items()}
    with CompileCounter() as counter, parallel.sharding_context(mesh, rules):
        train_step.lower(factory.abstract_with_shardings(), smaller)
    assert any("train_step" in name for name in counter.traced), counter.traced
