"""The GPU benchmarks' logic without a device: train_step's batch search (which batches it tries, that it keeps every
measurement made before a time limit, that only out-of-memory errors end it) and how profile_ops names the ops of a
CPU or GPU trace."""

from __future__ import annotations

import os
import sys
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import profile_ops  # noqa: E402
import train_step  # noqa: E402


class FakeRunner:
    def __init__(self):
        self.config = types.SimpleNamespace(seed=0)
        self.factory = types.SimpleNamespace(create=self.create_state)
        self.states_created = 0
        self.state = None

    def create_state(self, seed):
        self.states_created += 1
        return f"state {self.states_created}"


def search(monkeypatch, start, largest_fitting, max_batch=4096, error=None):
    def fake_time_batch(runner, batch_size, steps, repeats):
        if batch_size > largest_fitting:
            raise error or RuntimeError(f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate {batch_size}")
        return {"batch_size": batch_size, "pairs_per_second": float(batch_size)}

    monkeypatch.setattr(train_step, "time_batch", fake_time_batch)
    reports = []
    runner = FakeRunner()
    args = types.SimpleNamespace(max_batch=max_batch, steps=1, repeats=1)
    timed = train_step.time_fitting_batches(
        runner, start, args, lambda t, tried: reports.append((list(t), list(tried)))
    )
    return timed, reports, runner


def test_doubles_until_out_of_memory_and_reports_after_each_try(monkeypatch):
    timed, reports, runner = search(monkeypatch, start=256, largest_fitting=1024)
    assert [t["batch_size"] for t in timed] == [256, 512, 1024]
    assert [(r["batch_size"], r["fits"]) for r in reports[-1][1]] == [
        (256, True),
        (512, True),
        (1024, True),
        (2048, False),
    ]
    # each report holds every measurement made so far: a kill after the third try keeps 256, 512 and 1024
    assert [[t["batch_size"] for t in r[0]] for r in reports] == [[256], [256, 512], [256, 512, 1024]] + [
        [256, 512, 1024]  # the failed 2048 adds none
    ]
    assert runner.states_created == 1  # the OOM step consumed the donated state


def test_halves_a_start_batch_that_does_not_fit_and_never_retries_a_failed_size(monkeypatch):
    timed, reports, runner = search(monkeypatch, start=512, largest_fitting=200)
    assert [t["batch_size"] for t in timed] == [128]
    assert [(r["batch_size"], r["fits"]) for r in reports[-1][1]] == [(512, False), (256, False), (128, True)]
    assert runner.states_created == 2


def test_stops_at_max_batch(monkeypatch):
    timed, reports, _ = search(monkeypatch, start=4, largest_fitting=10**6, max_batch=16)
    assert [t["batch_size"] for t in timed] == [4, 8, 16]
    assert all(r["fits"] for r in reports[-1][1])


def test_other_errors_are_raised_not_taken_for_out_of_memory(monkeypatch):
    with pytest.raises(ValueError, match="shapes"):
        search(monkeypatch, start=4, largest_fitting=4, error=ValueError("incompatible shapes"))


def test_nothing_fits_is_a_clear_exit(monkeypatch):
    with pytest.raises(SystemExit, match="not even a batch of 1"):
        search(monkeypatch, start=4, largest_fitting=0)


# --- profile_ops: naming the ops of a trace on the CPU and on a GPU


def test_gpu_kernels_are_matched_to_their_hlo_instruction():
    hlo = (
        '  %loop_add_fusion.23 = f32[8]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(train_step)/layer_3/add"}\n'
        '  ROOT %custom-call.2 = bf16[8,8]{1,0} custom-call(%a, %b), metadata={op_name="jit(train_step)/dot_general"}\n'
    )
    origin = profile_ops.op_metadata(hlo)
    assert origin[profile_ops.kernel_key("loop_add_fusion_23")] == "layer_*/add"
    assert origin[profile_ops.kernel_key("custom-call.2")] == "dot_general"


@pytest.mark.parametrize(
    "name, origin, kind",
    [
        ("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT", "", "matmul"),
        ("gemm_fusion_dot_62", "", "matmul"),
        ("fusion.3", "encoder/mlp/dot_general", "matmul"),
        ("input_transpose_fusion_4", "", "copy / transpose / slice"),
        ("wrapped_slice_2", "", "copy / transpose / slice"),
        ("memcpy128", "", "copy / transpose / slice"),
        ("input_add_multiply_reduce_fusion", "", "reduction"),
        ("fusion.7", "softmax/reduce_max", "reduction"),
        ("loop_multiply_fusion_8", "", "other fusion / element-wise"),
    ],
)
def test_op_kind_names_cpu_ops_and_gpu_kernels(name, origin, kind):
    assert profile_ops.op_kind(name, origin) == kind


def test_a_kernel_inside_a_cuda_graph_is_named_by_its_fusion_not_the_command_buffer():
    def event(name, **stats):
        return types.SimpleNamespace(name=name, stats=list(stats.items()))

    assert profile_ops.hlo_op(event("loop_add_fusion_23", hlo_op="command_buffer_1")) == "loop_add_fusion_23"
    assert profile_ops.hlo_op(event("nvjet_sm90_x", hlo_op="custom-call.2")) == "custom-call.2"
    assert profile_ops.hlo_op(types.SimpleNamespace(name="fusion.4")) == "fusion.4"  # CPU events carry no stats


def test_set_overrides_parse_python_literals_and_refuse_what_is_not_key_value():
    assert train_step.parse_override("model.remat=False") == ("model.remat", False)
    assert train_step.parse_override("model.lexicon.chunk=4096") == ("model.lexicon.chunk", 4096)
    assert train_step.parse_override("objective.ela.loss=soft_ce") == ("objective.ela.loss", "soft_ce")
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        train_step.parse_override("model.remat")
