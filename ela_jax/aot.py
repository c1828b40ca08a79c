"""Ahead-of-time compilation for a TPU slice this machine does not have: the slice described by name, the real train
step and evaluation encoder compiled against it by the TPU compiler (libtpu), and what the compiled program needs
per chip (memory against HBM, FLOPs and bytes, a roofline step time, its collectives)."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import re
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import topologies

from ela_jax import config as config_lib
from ela_jax import parallel
from ela_jax.errors import ConfigError
from ela_jax.evaluation.encode import RETURNED, Encoder
from ela_jax.experiment import Experiment
from ela_jax.models import lexicon_kernel
from ela_jax.training.state import StateFactory

log = logging.getLogger(__name__)

GIB = 1024**3
LIBTPU_MISSING = (
    "ahead-of-time TPU compilation needs the libtpu package, which is not installed in this Python; run "
    "`make setup-tpu` and use .venv-tpu/bin/python (or pip install libtpu==0.0.42.1 into a separate environment)"
)


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: how slice names count it and what one chip offers."""

    name: str
    topology_prefix: str  # what libtpu calls it in a topology name, e.g. "v5e:16x16"
    cores_per_chip_in_name: int  # v4-8 and v5p-8 count TensorCores: 4 chips
    dims: int  # 2-D or 3-D torus
    chip_config: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_s: float


# Per-chip figures from Google's public TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
# /v6e): peak bf16 FLOP/s, HBM capacity and HBM bandwidth.
CHIPS = {
    "v4": Chip("v4", "v4", 2, 3, "megacore", 32 * GIB, 275e12, 1200e9),
    "v5e": Chip("v5e", "v5e", 1, 2, "default", 16 * GIB, 197e12, 819e9),
    "v5p": Chip("v5p", "v5", 2, 3, "megacore", 95 * GIB, 459e12, 2765e9),
    "v6e": Chip("v6e", "v6e", 1, 2, "default", 32 * GIB, 918e12, 1640e9),
}
SLICE_ALIASES = {"v5litepod": "v5e"}
# The largest power-of-two slice of each generation's pod (v4: 4096 chips, v5e and v6e: 256, v5p: 8960), in chips.
MAX_SLICE_CHIPS = {"v4": 4096, "v5e": 256, "v5p": 8192, "v6e": 256}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # as the user wrote it, e.g. "v5e-256"
    chip: Chip
    shape: tuple[int, ...]  # chips along each torus axis
    num_slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.num_slices

    @property
    def topology_name(self) -> str:
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        """Which torus axes wrap around: full 16-chip rows of a 2-D slice, every axis of a 3-D slice of 4^3 or more."""
        if self.chip.dims == 2:
            return (self.shape[0] == 16, self.shape[1] == 16, False)
        return (min(self.shape) >= 4,) * 3


def parse_slice(name: str, num_slices: int = 1) -> Slice:
    """'v5e-256' (also v5litepod-N, v4-N, v5p-N, v6e-N; v4 and v5p count TensorCores, two per chip) -> the slice."""
    match = re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)-(\d+)", name)
    if match is None:
        raise ConfigError(f"unknown TPU slice {name!r}; use v4-N, v5e-N (v5litepod-N), v5p-N or v6e-N, e.g. v5e-256")
    chip = CHIPS[SLICE_ALIASES.get(match.group(1), match.group(1))]
    count, per_chip = int(match.group(2)), chip.cores_per_chip_in_name
    chips = count // per_chip
    if count % per_chip or chips < 1 or chips & (chips - 1) or (1 < chips < 4):
        raise ConfigError(
            f"{name}: {chip.name} slices have a power-of-two number of chips, 1 or at least 4 ({per_chip * 4}, "
            f"{per_chip * 8}, ... in the name), e.g. v5e-256 or v5p-128"
        )
    largest = MAX_SLICE_CHIPS[chip.name]
    if chips > largest:
        raise ConfigError(
            f"{name}: a {chip.name} slice has at most {largest} chips ({chip.name}-{largest * per_chip} in the name), "
            "e.g. v5e-256 or v5p-128; use --num_slices for more"
        )
    if num_slices < 1:
        raise ConfigError(f"--num_slices must be >= 1, got {num_slices}")
    return Slice(name, chip, torus_shape(chips, chip.dims), num_slices)


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid Cloud TPU gives a power-of-two slice: as square (cubic) as it goes, larger axes last
    (v5e-128: 8x16, v5p-256: 4x4x8); the 4-chip 3-D slice is 2x2x1."""
    bits = chips.bit_length() - 1
    if dims == 3 and bits == 2:
        return (2, 2, 1)
    sizes = [bits // dims] * dims
    for axis in range(bits % dims):
        sizes[dims - 1 - axis] += 1
    return tuple(2**s for s in sizes)


def slice_devices(tpu: Slice) -> list:
    """Compile-only devices of the slice (no TPU needed), from libtpu's topology description."""
    if importlib.util.find_spec("libtpu") is None:
        raise LibtpuMissing(LIBTPU_MISSING)
    # libtpu takes a machine-wide lock meant for processes sharing real chips; compile-only devices share none, so
    # several compiles (a test beside a measurement) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    one_host = (1, 1, 1) if math.prod(tpu.shape) == 1 else (2, 2, 1)
    description = topologies.get_topology_desc(
        platform="tpu",
        topology_name=tpu.topology_name,
        chip_config_name=tpu.chip.chip_config,
        chips_per_host_bounds=one_host,
        num_slices=tpu.num_slices,
        wrap=tpu.wrap,
    )
    return list(description.devices)


class LibtpuMissing(RuntimeError):
    """This Python cannot compile for TPU."""


def without_data_sources(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose data section names the built-in world: compiling reads no data (the step's inputs are shapes),
    so the training and evaluation directories need not exist on this machine."""
    config = config.copy_and_resolve_references()
    config.data.name, config.data.eval_name, config.data.train = "world", "", ()
    return config


def abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the input pipeline feeds the step, as shapes sharded over the batch axes."""
    sharding = parallel.batch_sharding(mesh)
    rows, size, length = config.batch_size, config.data.image_size, config.tokenizer.max_length
    shapes = {
        "images": ((rows, size, size, 3), np.uint8),
        "token_ids": ((rows, length), np.int32),
        "mask": ((rows, length), np.bool_),
    }
    stream_rows = config.data.text_stream.batch_size
    if stream_rows > 0:
        shapes.update(stream_tokens=((stream_rows, length), np.int32), stream_mask=((stream_rows, length), np.bool_))
    return {key: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for key, (shape, dtype) in shapes.items()}


def abstract_params(factory: StateFactory) -> dict:
    return jax.tree.map(
        lambda abstract, sharding: jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=sharding),
        factory.abstract_params,
        factory.param_shardings,
    )


def lower_train_step(experiment: Experiment, factory: StateFactory):
    """The train step the loop runs (global batch, donated state, the config's memory knobs), lowered for the mesh."""
    step = experiment.train_step(factory)
    with parallel.sharding_context(experiment.mesh, parallel.logical_rules(experiment.config.mesh)):
        return step.lower(factory.abstract_with_shardings(), abstract_batch(experiment.config, experiment.mesh))


def lower_encoders(experiment: Experiment, factory: StateFactory) -> dict:
    """The evaluation encoders (images, captions) at eval.batch_size, lowered for the mesh."""
    config = experiment.config
    encoder = Encoder(
        experiment.model, None, experiment.mesh, parallel.logical_rules(config.mesh), config.eval.batch_size
    )
    return encoder.lower(abstract_params(factory), config.data.image_size, config.tokenizer.max_length, RETURNED)


def unrolled_step_flops(config: ml_collections.ConfigDict, global_batch: int, workdir: str) -> float:
    """XLA's FLOP count of the whole train step at `global_batch` with its layer loops unrolled (a loop's body is
    counted once). Lowered, not compiled, for one CPU device: the count does not depend on how the program is
    partitioned, and an unrolled model is slow to compile. With train.microbatches > 1 it misses the step's extra
    forward pass (it counts the undivided batch)."""
    config = config.copy_and_resolve_references()
    config.batch_size, config.train.microbatches, config.model.scan_layers = global_batch, 1, False
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    # The Pallas kernel cannot lower for CPU: count its plain-JAX twin, which computes the same max and argmax.
    if config.model.lexicon.impl == "pallas":
        config.model.lexicon.impl = "argmax"
    experiment = Experiment.build(config, workdir, devices=jax.devices("cpu")[:1])
    return float(lower_train_step(experiment, experiment.state_factory()).cost_analysis()["flops"])


class DoesNotFit(RuntimeError):
    """The compiler ran out of a chip's HBM."""

    def __init__(self, message: str, used: int | None, limit: int | None, detail: list[str] | None = None):
        super().__init__(message)
        self.used, self.limit = used, limit
        self.detail = detail or []  # the compiler's account of the peak: its largest allocations, with their sources


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}


def _bytes(text: str) -> int:
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)i?B?", text).groups()
    return int(float(number) * _SIZE_UNITS[unit])


def compile_or_explain(lowered):
    """The compiled program; DoesNotFit (with the compiler's used / available HBM when it says) on running out."""
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
            raise
        found = re.search(r"Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm", message) or re.search(
            r"HLO temporaries \(([\d.]+[KMGT]?)\) exceeds available HBM \(([\d.]+[KMGT]?)\)", message
        )
        used, limit = (_bytes(found.group(1)), _bytes(found.group(2))) if found else (None, None)
        lines = message.strip().splitlines()
        raise DoesNotFit(
            lines[0], used, limit, [line for line in lines[1:COMPILER_DETAIL_LINES] if line.strip()]
        ) from None


COMPILER_DETAIL_LINES = 120  # of an out-of-memory message: XLA lists the peak's largest allocations first


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(r"=\s+(?P<shape>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_RESULT = re.compile(r"=\s+(?P<shape>.+?)\s+[a-z][\w-]*\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_PARAMETER = re.compile(r"=\s+(?P<shape>\S+)\s+parameter\((?P<index>\d+)\)")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}
DTYPE_BYTES.update({"s64": 8, "u64": 8, "f64": 8})


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(m["dtype"], tuple(int(d) for d in m["dims"].split(",") if d)) for m in _ARRAY.finditer(shape_text)]


def _nbytes(dtype: str, dims: tuple[int, ...]) -> int:
    return DTYPE_BYTES.get(dtype, 4) * math.prod(dims)


def collectives(hlo_text: str, contrastive_batch: int) -> dict:
    """Collectives in the compiled program text, by kind (each op once, also inside loops), those whose result is a
    [B, B] matrix over the contrastive batch B (a gathered similarity matrix), and how many instructions of any kind
    produce a [B, B] array on one chip."""
    kinds: dict[str, dict] = {}
    square = []
    square_shape = f"[{contrastive_batch},{contrastive_batch}]"
    square_values = 0
    for line in hlo_text.splitlines():
        result = _RESULT.search(line)
        square_values += result is not None and square_shape in result["shape"]
        found = _COLLECTIVE.search(line)
        if found is None:
            continue
        arrays = _arrays(found["shape"])
        kind = kinds.setdefault(found["op"], {"count": 0, "result_bytes": 0})
        kind["count"] += 1
        kind["result_bytes"] += sum(_nbytes(dtype, dims) for dtype, dims in arrays)
        if any(dims[-2:] == (contrastive_batch, contrastive_batch) for _, dims in arrays):
            square.append(f"{found['op']} {found['shape']}")
    return {"by_kind": kinds, "batch_by_batch": square, "batch_by_batch_values": square_values}


_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.-]+) \(")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%(?P<name>[\w.-]+) = (?P<shape>.+?) (?P<op>[a-z][\w-]*)\(")
_FUSION_CALLEE = re.compile(r"\bfusion\(.*?calls=%(?P<callee>[\w.-]+)")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
_LAID_OUT_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\](?:\{(?P<layout>[^}]*)\})?")
# Results that own no new buffer: they alias an operand (a loop's state, a tuple's elements) or are the arguments.
ALIASING_OPS = {
    "parameter",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "while",
    "conditional",
    "call",
    "opt-barrier",
    "copy-start",
}


def largest_buffers(hlo_text: str, batch_shard: int, count: int = 12) -> list[dict]:
    """The largest arrays the compiled program allocates in HBM, from its optimised text: each instruction outside a
    fusion's body owns its result buffer (fused instructions live in registers and on-chip memory). Arrays the layout
    places in another memory space (`S(n)`: the chip's on-core memories) are left out, and so are the arguments.
    Identical ones (same shape, op and source) are counted together; `batch_dim` says whether a dimension equals the
    per-chip batch, a hint (by size alone) that the buffer grows with it. Bytes are the logical shape's, without the
    tiling's padding. These are candidates for the peak: which of them are live at once is XLA's buffer assignment."""
    lines = hlo_text.splitlines()
    fused = {m["callee"] for line in lines for m in _FUSION_CALLEE.finditer(line)}
    found: dict[tuple, dict] = {}
    computation = ""
    for line in lines:
        if (start := _COMPUTATION.match(line)) is not None:
            computation = start["name"]
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction is None or computation in fused or instruction["op"] in ALIASING_OPS:
            continue
        arrays = [
            (m["dtype"], tuple(int(d) for d in m["dims"].split(",") if d))
            for m in _LAID_OUT_ARRAY.finditer(instruction["shape"])
            if "S(" not in (m["layout"] or "")
        ]
        if not arrays:
            continue
        dtype, dims = max(arrays, key=lambda array: _nbytes(*array))
        op_name = _OP_NAME.search(line)
        source = op_name["op_name"] if op_name else ""
        key = (dtype, dims, instruction["op"], source)
        entry = found.setdefault(
            key,
            {
                "shape": f"{dtype}[{','.join(map(str, dims))}]",
                "bytes": _nbytes(dtype, dims),
                "op": instruction["op"],
                "instruction": instruction["name"],
                "source": source,
                "count": 0,
                "batch_dim": batch_shard in dims,
            },
        )
        entry["count"] += 1
    return sorted(found.values(), key=lambda entry: (-entry["bytes"], entry["instruction"]))[:count]


def buffer_table(buffers: list[dict]) -> str:
    """`largest_buffers` as a markdown table."""
    rows = ["| MiB | shape | op | count | grows with batch | source |", "|---|---|---|---|---|---|"]
    for buffer in buffers:
        cells = [f"{buffer['bytes'] / 2**20:.1f}", f"`{buffer['shape']}`", buffer["op"], str(buffer["count"])]
        cells += ["yes" if buffer["batch_dim"] else "", f"`{buffer['source']}`"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def entry_parameters(hlo_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, per-chip shape) of each argument of the compiled program's entry computation, in argument order."""
    entry = hlo_text[hlo_text.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}")]
    found = {int(m["index"]): _arrays(m["shape"])[0] for m in _PARAMETER.finditer(entry)}
    return [found[i] for i in sorted(found)]


def program_report(compiled, chip: Chip, unrolled_flops: float | None = None) -> dict:
    """Per-chip memory of a compiled program against the chip's HBM, XLA's FLOP and byte counts, and the roofline
    step time: the larger of FLOPs at peak bf16 rate and bytes at HBM bandwidth. XLA counts a loop's body once, so
    `unrolled_flops` (the same program's count with its layer loops unrolled), when given, sets the compute time."""
    memory = compiled.memory_analysis()
    used = {
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "aliased_bytes": memory.alias_size_in_bytes,  # donated arguments reused as outputs, counted once
        "temporary_bytes": memory.temp_size_in_bytes,
        "code_bytes": memory.generated_code_size_in_bytes,
    }
    peak = used["argument_bytes"] + used["output_bytes"] - used["aliased_bytes"] + used["temporary_bytes"]
    peak += used["code_bytes"]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    report = {
        "memory_per_chip": {**used, "peak_bytes": peak, "hbm_bytes": chip.hbm_bytes},
        "fits": peak <= chip.hbm_bytes,
        "headroom_bytes": chip.hbm_bytes - peak,
        "flops_per_chip": flops,
        "bytes_accessed_per_chip": accessed,
    }
    if unrolled_flops is not None:
        report["unrolled_flops_per_chip"] = unrolled_flops
    report["roofline"] = roofline(max(flops, unrolled_flops or 0.0), accessed, chip)
    if "optimal_seconds" in cost:
        report["compiler_estimate"] = compiler_estimate(float(cost["optimal_seconds"]), report["roofline"], chip)
    return report


def compiler_estimate(optimal_seconds: float, roofline_report: dict, chip: Chip) -> dict:
    """libtpu's own step-time estimate (`optimal_seconds`: the TPU compiler's model, not a measurement) and the
    model FLOP utilisation it would mean, beside the roofline's. The compiler gives a negative estimate for some
    programs (the scanned train step among them); that is reported as no estimate."""
    if optimal_seconds <= 0:
        return {"optimal_seconds": None, "reported": optimal_seconds}
    flops = roofline_report["compute_s"] * chip.peak_bf16_flops
    return {
        "optimal_seconds": optimal_seconds,
        "implied_mfu": flops / (optimal_seconds * chip.peak_bf16_flops),
        "over_roofline": optimal_seconds / roofline_report["step_s"] if roofline_report["step_s"] > 0 else None,
    }


def roofline(flops: float, accessed: float, chip: Chip) -> dict:
    compute_s, memory_s = flops / chip.peak_bf16_flops, accessed / chip.hbm_bytes_per_s
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "step_s": max(compute_s, memory_s),
        "bound": "compute" if compute_s >= memory_s else "memory",
    }


def parameter_report(hlo_text: str, experiment: Experiment, factory: StateFactory) -> dict:
    """Each parameter's spec, global shape and the shape one chip holds in the compiled program, with totals."""
    arguments = entry_parameters(hlo_text)
    state_leaves = len(jax.tree.leaves(factory.abstract_state))
    if len(arguments) != state_leaves + len(abstract_batch(experiment.config, experiment.mesh)):
        return {"per_chip_bytes": None, "note": "the compiled program dropped unused arguments; shapes unmatched"}
    report = parallel.sharding_report(experiment.mesh, factory.param_shardings, factory.abstract_params)
    first = len(jax.tree.leaves(factory.abstract_state.step))  # TrainState's params follow its step counter
    per_chip_bytes = global_bytes = 0
    for (name, entry), abstract, (dtype, shape) in zip(
        report["parameters"].items(), jax.tree.leaves(factory.abstract_params), arguments[first:]
    ):
        entry["per_chip_shape"] = list(shape)
        per_chip_bytes += _nbytes(dtype, shape)
        global_bytes += abstract.size * abstract.dtype.itemsize
    return {"per_chip_bytes": per_chip_bytes, "global_bytes": global_bytes, **report}


class SliceTarget:
    """A config on a slice's compile-only devices: builds the experiment and compiles its programs."""

    def __init__(self, config, tpu: Slice, workdir: str):
        self.config, self.tpu, self.workdir = without_data_sources(config), tpu, workdir
        self.devices = slice_devices(tpu)

    def experiment(self, batch_size: int | None = None) -> Experiment:
        config = self.config.copy_and_resolve_references()
        if batch_size is not None:
            config.batch_size = batch_size
        return Experiment.build(config, self.workdir, devices=self.devices)

    def batch_devices(self) -> int:
        data, fsdp, _ = config_lib.resolve_mesh_shape(self.config.mesh, len(self.devices))
        return data * fsdp

    def train_step(self, batch_size: int | None = None) -> dict:
        """The step's report at this global batch (the config's when None); when it runs out of memory, what the
        compiler said."""
        with lexicon_kernel.lowering_for("tpu"):  # the Pallas kernel is traced for the slice, not for this host
            return self._train_step(batch_size)

    def _train_step(self, batch_size: int | None) -> dict:
        experiment = self.experiment(batch_size)
        factory = experiment.state_factory()
        started = time.perf_counter()
        global_batch = experiment.config.batch_size
        summary = {"global_batch": global_batch, "per_chip_batch": global_batch / self.batch_devices()}
        try:
            compiled = compile_or_explain(lower_train_step(experiment, factory))
        except DoesNotFit as error:
            hbm = error.limit or self.tpu.chip.hbm_bytes
            memory = {"peak_bytes": error.used, "hbm_bytes": hbm}
            report = {**summary, "fits": False, "memory_per_chip": memory, "compiler": str(error)}
            return {**report, "compiler_detail": error.detail}
        report = program_report(compiled, self.tpu.chip, self.unrolled_flops(global_batch))
        text = compiled.as_text()
        microbatch = global_batch // experiment.config.train.microbatches
        temporary = report["memory_per_chip"]["temporary_bytes"]
        return {
            **summary,
            **report,
            "compile_s": round(time.perf_counter() - started, 1),
            # An upper bound on what one more example costs: the temporaries include batch-independent buffers.
            "temporary_bytes_per_example": temporary / summary["per_chip_batch"],
            "largest_buffers": largest_buffers(text, microbatch // self.batch_devices()),
            "collectives": collectives(text, microbatch),
            "parameters": parameter_report(text, experiment, factory),
        }

    def unrolled_flops(self, global_batch: int) -> float:
        """The train step's FLOPs per chip with its layer loops unrolled (`unrolled_step_flops` over the chips)."""
        return unrolled_step_flops(self.config, global_batch, self.workdir) / self.tpu.chips

    def encoders(self) -> dict:
        experiment = self.experiment()
        with lexicon_kernel.lowering_for("tpu"):
            lowered = lower_encoders(experiment, experiment.state_factory())
        reports = {}
        for name, program in lowered.items():
            try:
                reports[name] = program_report(compile_or_explain(program), self.tpu.chip)
            except DoesNotFit as error:
                reports[name] = {"fits": False, "compiler": str(error)}
        return {"chunk": experiment.encoder(None, experiment.config.eval.batch_size).batch_size, **reports}


def search_batch(target: SliceTarget, report: dict, write, tolerance: float = 0.0) -> dict:
    """The largest per-chip batch whose step fits, to within `tolerance` of it. Memory grows about linearly with the
    batch, so from the config's per-chip batch (halved until it fits) the search tries where the memory line meets
    the HBM: first the line from the batch-independent memory through the fitting size, then through the last two
    fits, then through the last fit and the first failure (doubling and bisecting where the compiler did not say
    what it used)."""
    unit = target.batch_devices() * target.config.train.microbatches
    fits = fails = None  # (per-chip size in units, peak bytes)
    fitting = []  # every (size, peak bytes) that fit, in order, after the batch-independent memory
    size = max(1, target.config.batch_size // unit)
    tries = report.setdefault("tries", [])
    report["search"] = {"tolerance": tolerance, "finished": False}  # until the gap is closed
    while fits is None or fails is None or fails[0] - fits[0] > max(1, int(fits[0] * tolerance)):
        result = target.train_step(size * unit)
        tries.append(result)
        if result["fits"]:
            report["largest_fitting"] = result
        write(report)  # after every compile: a search stopped by a time limit keeps what it found
        log.warning("global batch %d: %s", size * unit, "fits" if result["fits"] else "does not fit")
        if result["fits"]:
            fits = (size, result["memory_per_chip"]["peak_bytes"])
            if not fitting:
                fitting.extend(batch_independent_memory(result))
            fitting.append(fits)
        else:
            fails = (size, result["memory_per_chip"]["peak_bytes"])
            if fits is None and size == 1:
                break
        if fails is None:
            size = next_size_up(fitting, result["memory_per_chip"]["hbm_bytes"], tolerance)
        elif fits is None:
            size //= 2
        else:
            size = next_size(fits, fails, result["memory_per_chip"]["hbm_bytes"])
    report["search"] = {"tolerance": tolerance, "finished": True}
    write(report)
    return report


def batch_independent_memory(result: dict) -> list[tuple]:
    """The memory at batch 0, as a first point of the memory line: everything but the temporaries (the train state,
    the program), when the compiler said both. With it, one fitting size already predicts the largest."""
    memory = result["memory_per_chip"]
    if memory.get("temporary_bytes") is None or memory["peak_bytes"] is None:
        return []
    return [(0, memory["peak_bytes"] - memory["temporary_bytes"])]


def next_size_up(fitting: list[tuple], hbm: int, tolerance: float) -> int:
    """The next size to try while everything has fit: where the line through the last two points of `fitting` meets
    the HBM (a compile at 256 chips takes minutes, and doubling would take several to get there), but at least
    `tolerance` above the last size; doubling while there is no line."""
    size = fitting[-1][0]
    if len(fitting) < 2 or None in (fitting[-1][1], fitting[-2][1]) or fitting[-1][1] <= fitting[-2][1]:
        return size * 2
    (low, low_bytes), (high, high_bytes) = fitting[-2], fitting[-1]
    predicted = high + round((hbm - high_bytes) * (high - low) / (high_bytes - low_bytes))
    # At least a tolerance's step: where memory grows slower than its line, the line lands just short every time.
    return max(predicted, size + max(1, int(size * tolerance)))


def next_size(fits: tuple, fails: tuple, hbm: int) -> int:
    """A size strictly between the two: where memory, linear in the size, reaches `hbm` (the middle if unknown),
    kept out of the gap's outer quarters so that the gap shrinks by a quarter or more whatever the memory does."""
    (low, low_bytes), (high, high_bytes) = fits, fails
    size = (low + high) // 2
    if high_bytes is not None and high_bytes > low_bytes:
        size = low + int((hbm - low_bytes) * (high - low) / (high_bytes - low_bytes))
    margin = max(1, (high - low) // 4)
    return min(max(size, low + margin), high - margin)


def advice(result: dict, config) -> str:
    memory = result["memory_per_chip"]
    over = (
        "" if memory["peak_bytes"] is None else f" ({(memory['peak_bytes'] - memory['hbm_bytes']) / GIB:.2f} GiB over)"
    )
    return (
        f"the train step does not fit one chip's {memory['hbm_bytes'] / GIB:.1f} GiB HBM{over} at global batch "
        f"{result['global_batch']}; lower batch_size (--search_batch finds the largest), set model.remat=True "
        f"(now {config.model.remat}) or model.remat_policy=full (now {config.model.remat_policy!r}), a smaller "
        f"model.lexicon.chunk (now {config.model.lexicon.chunk}), or shard more (mesh preset fsdp or fsdp_tp)"
    )


TABLE_HEADER = (
    "| config | mesh | slice | remat | largest global batch that fits (per chip) | its memory per chip "
    "| first that does not fit | roofline step at that batch | parameters per chip | [B, B] values on a chip |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(report: dict) -> str:
    """One markdown row for a `--search_batch` report: the largest fitting batch and the smallest failing one above
    it; a search stopped before closing its gap shows its largest fit as a lower bound."""
    config_path, _, preset = report["config"].partition(":")
    mesh = " x ".join(f"{axis} {size}" for axis, size in report["mesh"].items() if size > 1)
    chip = report["chip"]
    remat = report["remat_policy"] if report["remat"] else "off"
    fit = report.get("largest_fitting")
    above = [t for t in report["tries"] if not t["fits"] and (fit is None or t["global_batch"] > fit["global_batch"])]
    fail = min(above, key=lambda t: t["global_batch"]) if above else None
    finished = report.get("search", {}).get("finished", False)

    def batch(result: dict) -> str:  # per chip, not per batch shard: with tensor parallelism chips share a shard
        return f"{result['global_batch']:,} ({result['global_batch'] / report['chips']:g})"

    def memory(result: dict) -> str:
        peak = result["memory_per_chip"]["peak_bytes"]
        return "–" if peak is None else f"{peak / GIB:.2f} GiB"

    largest = "none" if fit is None else ("" if finished else "≥ ") + batch(fit)
    cells = [
        f"{os.path.basename(config_path).removesuffix('.py')} `{preset or 'config'}`",
        mesh or "1 chip",
        f"{report['topology']} ({report['chips']} chips, {chip['hbm_bytes'] / GIB:.0f} GiB)",
        remat,
        f"**{largest}**" + ("" if finished else ": search not finished"),
        "–" if fit is None else memory(fit),
        "–" if fail is None else f"{batch(fail)}: {memory(fail)}",
        "–" if fit is None else f"≥ {fit['roofline']['step_s'] * 1e3:.0f} ms ({fit['roofline']['bound']}-bound)",
        "–" if fit is None else parameter_share(fit["parameters"]),
        "–" if fit is None else str(fit["collectives"]["batch_by_batch_values"]),
    ]
    return "| " + " | ".join(cells) + " |"


def parameter_share(parameters: dict) -> str:
    """Bytes of parameters one chip holds, and as a fraction of the model: 1/n under n-way FSDP."""
    share = parameters["global_bytes"] / parameters["per_chip_bytes"]
    return f"{parameters['per_chip_bytes'] / 2**20:.1f} MiB (1/{share:.0f})"


def markdown_table(reports: list[dict]) -> str:
    """The `--search_batch` reports as one markdown table, ordered by config, mesh preset, slice and remat."""
    order = sorted(reports, key=lambda r: (r["config"], r["topology"], not r["remat"]))
    return "\n".join([TABLE_HEADER, *map(table_row, order)])
