"""Ahead-of-time TPU compilation: the real train step compiles for a TPU slice on this CPU machine (in .venv-tpu,
which holds libtpu), and the compiled program holds per chip exactly the parameter shards each mesh preset's
PartitionSpecs promise."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import jax
import pytest

from ela_jax import aot, paths
from ela_jax import config as config_lib
from ela_jax.errors import ConfigError
from tests.helpers import module_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_PYTHON = os.path.join(REPO, ".venv-tpu", "bin", "python")
LARGE = 1024  # elements: the tiny model's kernels and embeddings; its biases, norms and scales are smaller


@pytest.mark.parametrize(
    "name, chip, shape",
    [
        ("v5e-4", "v5e", (2, 2)),
        ("v5e-128", "v5e", (8, 16)),
        ("v5litepod-256", "v5e", (16, 16)),
        ("v6e-8", "v6e", (2, 4)),
        ("v4-8", "v4", (2, 2, 1)),
        ("v4-32", "v4", (2, 2, 4)),
        ("v5p-128", "v5p", (4, 4, 4)),
        ("v5p-256", "v5p", (4, 4, 8)),
    ],
)
def test_slice_names_give_cloud_tpu_chip_grids(name, chip, shape):
    tpu = aot.parse_slice(name)
    assert (tpu.chip.name, tpu.shape) == (chip, shape)
    assert tpu.chips == math.prod(shape)


@pytest.mark.parametrize("name", ["v5e-3", "v5p-6", "v7-8", "v5e-2", "v5p-4", "v5e-1073741824", "v4-16384", "v6e-512"])
def test_slice_names_that_do_not_exist_are_refused(name):
    with pytest.raises(ConfigError, match="v5e-256") as error:
        aot.parse_slice(name)
    assert "\n" not in str(error.value)


def test_a_report_path_that_cannot_be_written_is_refused_before_compiling(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match=r"--output .*a_file/report.json cannot be written \(File exists\)"):
        paths.check_writable(str(tmp_path / "a_file" / "report.json"), "--output")
    with pytest.raises(ConfigError, match="--output .* is a folder; give the path of a file"):
        paths.check_writable(str(tmp_path), "--output")
    paths.check_writable(str(tmp_path / "new" / "report.json"), "--output")
    assert os.listdir(tmp_path / "new") == []  # checked, nothing left behind


@pytest.mark.integration  # runs the command line
def test_compile_with_a_typod_key_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ela_jax.compile", "--config", "configs/demo.py", "--topology", "v5e-4"]
        + ["--config.optim.lrr=1"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("flag error: the config has no key 'lrr'")


def test_collectives_are_counted_by_kind_and_batch_squares_found():
    hlo = "\n".join(
        [
            "  %ag = f32[96,768]{1,0:T(8,128)} all-gather(f32[12,768]{1,0} %x), dimensions={0}",
            "  %ars = (f32[64,64]{1,0}, bf16[96,96]{1,0}) all-reduce-start(%a, %b), to_apply=%add",
            "  %ard = (f32[64,64]{1,0}, bf16[96,96]{1,0}) all-reduce-done(%ars)",
            "  %rs = f32[12,768]{1,0} reduce-scatter(f32[96,768]{1,0} %g), dimensions={0}",
            "  %dot = f32[96,96]{1,0} dot(%p, %q)",
        ]
    )
    found = aot.collectives(hlo, contrastive_batch=96)
    assert found["by_kind"] == {
        "all-gather": {"count": 1, "result_bytes": 96 * 768 * 4},
        "all-reduce": {"count": 1, "result_bytes": 64 * 64 * 4 + 96 * 96 * 2},
        "reduce-scatter": {"count": 1, "result_bytes": 12 * 768 * 4},
    }
    assert len(found["batch_by_batch"]) == 1 and found["batch_by_batch"][0].startswith("all-reduce")
    assert found["batch_by_batch_values"] == 3  # the all-reduce's start and done, and the dot


def test_largest_buffers_are_hbm_results_outside_fusions_with_their_source():
    hlo = "\n".join(
        [
            "%fused_computation.1 (param_0: f32[16,64,4096]) -> f32[16,64,4096] {",
            "  %inside = f32[16,64,4096]{2,1,0} exponential(f32[16,64,4096]{2,1,0} %param_0)",
            "}",
            "ENTRY %main (p0: f32[16,64,768], p1: bf16[768,4096]) -> f32[16,64] {",
            "  %p1 = bf16[768,4096]{1,0} parameter(1)",
            "  %logits = f32[16,64,4096]{2,1,0:T(8,128)} fusion(%p0, %p1), kind=kOutput, calls=%fused_computation.1, "
            'metadata={op_name="jit(train_step)/text_lexicon/dot_general" stack_frame_id=3}',
            "  %vmem = f32[16,64,8192]{2,1,0:T(8,128)S(1)} fusion(%p0), kind=kLoop, calls=%fused_computation.1",
            '  %copy = bf16[16,64,768]{2,1,0} copy(%p0), metadata={op_name="jit(train_step)/image_tower/copy"}',
            '  %copy.2 = bf16[16,64,768]{2,1,0} copy(%p0), metadata={op_name="jit(train_step)/image_tower/copy"}',
            "  ROOT %t = (f32[16,64]{1,0}) tuple(%logits)",
            "}",
        ]
    )
    buffers = aot.largest_buffers(hlo, batch_shard=16)
    assert [b["shape"] for b in buffers] == ["f32[16,64,4096]", "bf16[16,64,768]"]  # no fused, VMEM or argument
    assert buffers[0] == {
        "shape": "f32[16,64,4096]",
        "bytes": 16 * 64 * 4096 * 4,
        "op": "fusion",
        "instruction": "logits",
        "source": "jit(train_step)/text_lexicon/dot_general",
        "count": 1,
        "batch_dim": True,
    }
    assert buffers[1]["count"] == 2 and buffers[1]["bytes"] == 16 * 64 * 768 * 2
    assert "| 16.0 | `f32[16,64,4096]` | fusion | 1 | yes |" in aot.buffer_table(buffers)


def array_bytes(shape: str) -> int:
    dtype, dims = shape.rstrip("]").split("[")
    return aot.DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)


def expected_per_chip_shape(parameter: dict, mesh: dict) -> list[int]:
    """A dimension split over mesh axes holds 1 / (product of their sizes) of it on each chip."""
    shape = []
    for size, axes in zip(parameter["shape"], parameter["spec"] + [None] * len(parameter["shape"])):
        axes = [] if axes is None else [axes] if isinstance(axes, str) else axes
        shape.append(size // math.prod(mesh[axis] for axis in axes))
    return shape


@pytest.mark.integration
def test_each_mesh_preset_compiles_for_a_tpu_slice_holding_the_promised_shards():
    assert os.path.exists(TPU_PYTHON), "ahead-of-time compilation needs .venv-tpu; run `make setup-tpu`"
    reports = module_report("tests.aot_presets", "v5e-4", python=TPU_PYTHON)
    chips = 4
    for preset, report in reports.items():
        parameters = report["parameters"]
        mesh = parameters["mesh"]
        assert math.prod(mesh.values()) == chips and report["fits"], preset
        for name, parameter in parameters["parameters"].items():
            assert parameter["per_chip_shape"] == expected_per_chip_shape(parameter, mesh), (preset, name)
        # The presets' promise: dp keeps every parameter whole, FSDP holds 1/n of each large one on every chip.
        for name, parameter in parameters["parameters"].items():
            size, per_chip = math.prod(parameter["shape"]), math.prod(parameter["per_chip_shape"])
            if preset == "dp":
                assert per_chip == size, name
            elif size >= LARGE:
                assert per_chip * mesh["fsdp"] <= size, (preset, name, parameter)
        if preset == "dp":
            assert parameters["per_chip_bytes"] == parameters["global_bytes"]
        # The contrastive terms score each chip's rows against gathered embeddings, never a gathered [B, B] matrix.
        assert report["collectives"]["batch_by_batch"] == [], (preset, report["collectives"]["batch_by_batch"])
        assert report["collectives"]["batch_by_batch_values"] == 0, preset
        assert "all-gather" in report["collectives"]["by_kind"] or preset == "dp"
        # The breakdown: the largest buffers first, each one's bytes its shape's, some traced to the model's code.
        buffers = report["largest_buffers"]
        assert buffers and [b["bytes"] for b in buffers] == sorted((b["bytes"] for b in buffers), reverse=True)
        assert all(b["bytes"] == array_bytes(b["shape"]) for b in buffers), buffers
        assert any(b["source"].startswith("jit(train_step)/") for b in buffers), buffers
        assert "optimal_seconds" in report["compiler_estimate"]  # a number, or None where libtpu's is negative


@pytest.mark.integration
def test_the_pallas_lexicon_compiles_for_a_tpu_slice_under_each_mesh_preset():
    """XLA cannot partition a Mosaic kernel ("wrap the call in a shard_map"): the fused lexicon impl runs it per chip,
    and the step with it compiles for the slice, batch and vocabulary split."""
    assert os.path.exists(TPU_PYTHON), "ahead-of-time compilation needs .venv-tpu; run `make setup-tpu`"
    reports = module_report("tests.aot_presets", "v5e-4", "pallas", python=TPU_PYTHON)
    assert set(reports) == {"dp", "fsdp", "fsdp_tp"}
    for preset, report in reports.items():
        assert report["fits"] and report["memory_per_chip"]["peak_bytes"] > 0, (preset, report.get("compiler"))


@pytest.mark.integration  # spawns the libtpu environment
def test_the_compilers_estimate_of_a_large_matmul_is_its_compute_roofline():
    """What `compiler_estimate` reports can be read against the roofline: on a matmul large enough to reach peak
    rate, libtpu's optimal_seconds is the FLOPs at the chip's datasheet bf16 rate."""
    assert os.path.exists(TPU_PYTHON), "ahead-of-time compilation needs .venv-tpu; run `make setup-tpu`"
    size = 8192
    report = module_report("tests.aot_matmul", size, python=TPU_PYTHON, timeout=300)
    assert report["flops_per_chip"] == 2 * size**3
    assert report["roofline"]["bound"] == "compute"
    estimate = report["compiler_estimate"]
    assert estimate["optimal_seconds"] == pytest.approx(report["roofline"]["compute_s"], rel=0.02)
    assert estimate["implied_mfu"] == pytest.approx(1.0, rel=0.02)


def test_a_negative_compiler_estimate_is_reported_as_none():
    roofline = aot.roofline(1e12, 1e9, aot.CHIPS["v5e"])
    assert aot.compiler_estimate(-131.9, roofline, aot.CHIPS["v5e"]) == {"optimal_seconds": None, "reported": -131.9}
    assert aot.compiler_estimate(0.01, roofline, aot.CHIPS["v5e"])["implied_mfu"] == pytest.approx(1e12 / 197e12 / 0.01)


@pytest.mark.integration
def test_without_libtpu_the_tool_says_how_to_install_it():
    result = subprocess.run(
        [sys.executable, "-m", "ela_jax.compile", "--config", "configs/demo.py", "--topology", "v5e-4"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"compile error: {aot.LIBTPU_MISSING}"


class Lowered:
    def __init__(self, error: str):
        self.error = error

    def compile(self):
        raise jax.errors.JaxRuntimeError(self.error)


def test_running_out_of_hbm_is_read_from_the_compiler_message():
    message = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 21.95G of "
        "15.48G hbm. Exceeded hbm capacity by 6.47G.\n\nTotal hbm usage >= 22.47G:"
    )
    with pytest.raises(aot.DoesNotFit) as caught:
        aot.compile_or_explain(Lowered(message))
    assert (caught.value.used, caught.value.limit) == (int(21.95 * aot.GIB), int(15.48 * aot.GIB))
    assert "\n" not in str(caught.value)
    assert caught.value.detail == ["Total hbm usage >= 22.47G:"]  # the peak's account, kept for the report
    # The compiler's early check, before it plans the buffers, names the temporaries alone (a lower bound).
    early = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (21.41G) "
        "exceeds available HBM (15.75G)."
    )
    with pytest.raises(aot.DoesNotFit) as caught:
        aot.compile_or_explain(Lowered(early))
    assert (caught.value.used, caught.value.limit) == (int(21.41 * aot.GIB), int(15.75 * aot.GIB))
    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):  # other errors are not taken for OOM
        aot.compile_or_explain(Lowered("INVALID_ARGUMENT: a sharding XLA cannot partition"))


class FakeTarget:
    """Compiles nothing: a step needs 1 GiB + 0.1 GiB per example on a chip, of 4 GiB (up to 30 per chip fit)."""

    def __init__(self, batch_size: int, gib_used=lambda per_chip: 1 + 0.1 * per_chip, says_temporaries=False):
        self.config = config_lib.base_config()
        self.config.batch_size = batch_size
        self.gib_used, self.says_temporaries = gib_used, says_temporaries
        self.tried: list[int] = []

    def batch_devices(self) -> int:
        return 8

    def train_step(self, batch_size: int) -> dict:
        self.tried.append(batch_size // 8)
        used = int(self.gib_used(batch_size // 8) * aot.GIB)
        memory = {"peak_bytes": used, "hbm_bytes": 4 * aot.GIB}
        if self.says_temporaries:
            memory["temporary_bytes"] = used - int(self.gib_used(0) * aot.GIB)
        return {"global_batch": batch_size, "fits": used <= 4 * aot.GIB, "memory_per_chip": memory}


@pytest.mark.parametrize("start", [4 * 8, 64 * 8])
def test_batch_search_doubles_then_closes_in_on_the_largest_fitting_batch(start):
    target = FakeTarget(start)
    report = aot.search_batch(target, {}, write=lambda report: None)
    assert report["largest_fitting"]["global_batch"] == 30 * 8
    assert 31 in target.tried and len(target.tried) == len(set(target.tried)) <= 7, target.tried


@pytest.mark.parametrize("start", [1 * 8, 4 * 8])
def test_batch_search_jumps_to_where_memory_meets_the_hbm_after_two_fitting_sizes(start):
    target = FakeTarget(start)
    report = aot.search_batch(target, {}, write=lambda report: None)
    assert report["largest_fitting"]["global_batch"] == 30 * 8
    # Doubling alone would take 8 compiles from 1; the line through the first two lands on (or next to) 30.
    assert target.tried[:2] == [start // 8, start // 4] and target.tried[2] in (29, 30), target.tried
    assert len(target.tried) <= 5 and target.tried[-1] == 31, target.tried


@pytest.mark.parametrize("start", [1 * 8, 4 * 8])
def test_one_fitting_size_and_the_batch_independent_memory_predict_the_largest(start):
    target = FakeTarget(start, says_temporaries=True)
    report = aot.search_batch(target, {}, write=lambda report: None)
    assert report["largest_fitting"]["global_batch"] == 30 * 8 and target.tried == [start // 8, 30, 31]


def test_batch_search_steps_at_least_the_tolerance_when_memory_grows_slower_than_its_line():
    # 4 GiB * sqrt(b / 100): up to 100 per chip fit, and each line through two fits lands short of that.
    target = FakeTarget(8 * 8, gib_used=lambda per_chip: 4 * math.sqrt(per_chip / 100))
    report = aot.search_batch(target, {}, write=lambda report: None, tolerance=0.25)
    fits = report["largest_fitting"]["global_batch"] // 8
    failed = min(size for size in target.tried if size > 100)
    assert failed - fits <= fits * 0.25 and len(target.tried) <= 5, target.tried


def test_the_written_report_names_the_largest_fitting_batch_after_every_compile():
    written = []
    report = aot.search_batch(FakeTarget(4 * 8), {}, write=lambda report: written.append(copy.deepcopy(report)))
    assert written[-1] == report and written[-1]["largest_fitting"]["global_batch"] == 30 * 8
    for snapshot in written:
        fitting = [t["global_batch"] for t in snapshot["tries"] if t["fits"]]
        assert snapshot["largest_fitting"]["global_batch"] == max(fitting)


def test_advice_names_what_to_change():
    config = config_lib.base_config()
    result = {"global_batch": 4096, "memory_per_chip": {"peak_bytes": 18 * aot.GIB, "hbm_bytes": 16 * aot.GIB}}
    line = aot.advice(result, config)
    assert "\n" not in line and "2.00 GiB over" in line
    for knob in ("batch_size", "model.remat", "model.lexicon.chunk", "fsdp"):
        assert knob in line


def searched_report(tolerance_closed: bool) -> dict:
    """A `--search_batch` report as the tool writes it, from FakeTarget's memory line on a 2-chip fsdp x tensor mesh."""
    report = {
        "config": "configs/ela_b16.py:fsdp_tp",
        "topology": "v5e-4",
        "chips": 4,
        "chip": {"hbm_bytes": 4 * aot.GIB},
        "mesh": {"data": 1, "fsdp": 2, "tensor": 2},
        "remat": True,
        "remat_policy": "dots_no_batch",
    }
    aot.search_batch(FakeTarget(4 * 8), report, write=lambda report: None, tolerance=0.0)
    for result in report["tries"]:
        result["roofline"] = {"step_s": 0.0125, "bound": "memory"}
        result["parameters"] = {"per_chip_bytes": 3 * 2**20, "global_bytes": 12 * 2**20}
        result["collectives"] = {"batch_by_batch_values": 0}
    if not tolerance_closed:
        report["tries"] = [t for t in report["tries"] if t["fits"]]
        report["search"]["finished"] = False
    return report


def test_the_table_row_gives_the_largest_fit_per_chip_and_the_first_failure_above_it():
    row = aot.markdown_table([searched_report(tolerance_closed=True)]).splitlines()[2]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # FakeTarget: 30 per batch shard of 8 fit (4.0 GiB), 31 do not (4.1 GiB); 240 examples over 4 chips is 60 each.
    assert cells[:5] == [
        "ela_b16 `fsdp_tp`",
        "fsdp 2 x tensor 2",
        "v5e-4 (4 chips, 4 GiB)",
        "dots_no_batch",
        "**240 (60)**",
    ]
    assert cells[5:] == ["4.00 GiB", "248 (62): 4.10 GiB", "≥ 12 ms (memory-bound)", "3.0 MiB (1/4)", "0"]


def test_a_search_that_did_not_finish_shows_its_largest_fit_as_a_lower_bound():
    row = aot.table_row(searched_report(tolerance_closed=False))
    assert "**≥ 240 (60)**: search not finished" in row and "| – |" in row


@pytest.mark.integration
def test_the_unrolled_flop_count_grows_by_one_blocks_work_per_layer(tmp_path):
    config = aot.without_data_sources(config_lib.base_config())
    config.model = config_lib.tiny_model()
    config.model.scan_layers, config.batch_size = True, 8

    def flops(image_depth: int) -> float:
        config.model.image.depth = image_depth
        return aot.unrolled_step_flops(config, config.batch_size, str(tmp_path))

    two, three, four = flops(2), flops(3), flops(4)
    per_layer = three - two
    assert per_layer > 0 and four - three == pytest.approx(per_layer, rel=1e-3)
    # A ViT block's forward matmuls alone: 8 examples x 65 tokens x 2 x (4 x 96^2 + 2 x 96 x 384) FLOPs.
    assert per_layer >= 8 * 65 * 2 * (4 * 96**2 + 2 * 96 * 384) * 3
