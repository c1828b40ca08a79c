"""python -m ela_jax.compile --config configs/ela_b16.py:fsdp --topology v5e-256 [--num_slices N] [--search_batch]
[--output PATH | --workdir W] [--config.KEY=VALUE ...]

Compiles the real train step and evaluation encoder for a TPU slice ahead of time, on a machine without one, and
reports per chip: memory against HBM and its largest buffers (also as a table on stderr), FLOPs and bytes, a roofline
step time beside the TPU compiler's own estimate, and the collectives (JSON). Needs libtpu:
run it with .venv-tpu/bin/python (`make setup-tpu`). With --search_batch it finds the largest per-chip batch that
fits, along the line its memory follows as the batch grows."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from ela_jax import aot, paths
from ela_jax import config as config_lib
from ela_jax.cli import parse_flags, quiet_libraries
from ela_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice: v4-N, v5e-N (v5litepod-N), v5p-N or v6e-N.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-centre network (multi-slice).")
_OUTPUT = flags.DEFINE_string("output", None, "Write the JSON report here.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Write the JSON report to W/compile/<topology>.json.")
_SEARCH = flags.DEFINE_boolean("search_batch", False, "Find the largest per-chip batch that fits.")
_TOLERANCE = flags.DEFINE_float(
    "search_tolerance", 0.0, "Stop bisecting when the gap is at most this fraction of the fitting batch (0: exact)."
)
_EVAL = flags.DEFINE_boolean("eval_encoder", True, "Also compile the evaluation encoders.")
flags.mark_flags_as_required(["config", "topology"])


def output_path() -> str | None:
    if _OUTPUT.value:
        return _OUTPUT.value
    if _WORKDIR.value:
        return os.path.join(_WORKDIR.value, "compile", f"{_TOPOLOGY.value}.json")
    return None


def main(argv) -> None:
    del argv
    quiet_libraries()
    path = output_path()

    def write(report: dict) -> None:
        if path:
            try:
                paths.write_json(paths.absolute(path), report)
            except OSError as error:
                sys.exit(f"compile error: writing {path} failed: {error.strerror or error}")

    config = _CONFIG.value
    try:
        if path:  # before compiling: minutes of work must not end in a report nowhere to go
            paths.check_writable(path, "--output" if _OUTPUT.value else "--workdir")
        tpu = aot.parse_slice(_TOPOLOGY.value, _NUM_SLICES.value)
        target = aot.SliceTarget(config, tpu, _WORKDIR.value or tempfile.mkdtemp(prefix="ela_compile_"))
        report = {
            "config": flags.FLAGS["config"].config_filename,
            "topology": tpu.name,
            "num_slices": tpu.num_slices,
            "chips": tpu.chips,
            "chip": dataclasses.asdict(tpu.chip),
            "mesh": dict(zip(("data", "fsdp", "tensor"), config_lib.resolve_mesh_shape(config.mesh, tpu.chips))),
            "remat": config.model.remat,
            "remat_policy": config.model.remat_policy,
            "lexicon_chunk": config.model.lexicon.chunk,
        }
        if _SEARCH.value:
            aot.search_batch(target, report, write, _TOLERANCE.value)
        else:
            report["train_step"] = target.train_step()
            write(report)
        if _EVAL.value:
            report["eval_encoders"] = target.encoders()
            write(report)
    except (ConfigError, aot.LibtpuMissing) as error:
        sys.exit(f"compile error: {error}")
    print(json.dumps(report, indent=1))
    step = report.get("train_step") or report.get("largest_fitting")
    if step is not None and "largest_buffers" in step:
        print(f"largest buffers per chip at global batch {step['global_batch']}:", file=sys.stderr)
        print(aot.buffer_table(step["largest_buffers"]), file=sys.stderr)
    if step is None:
        sys.exit(f"compile error: not even a per-chip batch of 1 fits; {aot.advice(report['tries'][-1], config)}")
    if not step["fits"]:
        sys.exit(f"compile error: {aot.advice(step, config)}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
