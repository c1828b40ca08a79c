"""python -m ela_jax.compile --config configs/ela_b16.py:fsdp --topology v5e-256 [--num_slices N] [--search_batch]
[--output PATH | --workdir W] [--config.KEY=VALUE ...]

Compiles the real train step and evaluation encoder for a TPU slice ahead of time, on a machine without one, and
reports per chip: memory against HBM, FLOPs and bytes, a roofline step time and the collectives (JSON). Needs libtpu:
run it with .venv-tpu/bin/python (`make setup-tpu`). With --search_batch it finds the largest per-chip batch that
fits: doubling from the config's, then bisecting."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from ela_jax import aot
from ela_jax import config as config_lib
from ela_jax.cli import quiet_libraries
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

log = logging.getLogger(__name__)


def search_batch(target: aot.SliceTarget, report: dict, write, tolerance: float = 0.0) -> dict:
    """The largest per-chip batch whose step fits: doubling from the config's per-chip batch (halving when that does
    not fit), then narrowing the gap between the last size that fit and the first that did not, to within
    `tolerance` of the fitting size. Memory grows about linearly with the batch, so each narrowing step tries where
    the line through the two sizes' memory meets the HBM (bisecting when the compiler did not say what it used)."""
    unit = target.batch_devices() * target.config.train.microbatches
    fits = fails = None  # (per-chip size in units, peak bytes)
    size = max(1, target.config.batch_size // unit)
    tries = report.setdefault("tries", [])
    while fits is None or fails is None or fails[0] - fits[0] > max(1, int(fits[0] * tolerance)):
        result = target.train_step(size * unit)
        tries.append(result)
        write(report)
        log.warning("global batch %d: %s", size * unit, "fits" if result["fits"] else "does not fit")
        if result["fits"]:
            fits = (size, result["memory_per_chip"]["peak_bytes"])
            report["largest_fitting"] = result
        else:
            fails = (size, result["memory_per_chip"]["peak_bytes"])
            if fits is None and size == 1:
                break
        if fails is None:
            size *= 2
        elif fits is None:
            size //= 2
        else:
            size = next_size(fits, fails, result["memory_per_chip"]["hbm_bytes"])
    return report


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
        ""
        if memory["peak_bytes"] is None
        else f" ({(memory['peak_bytes'] - memory['hbm_bytes']) / aot.GIB:.2f} GiB over)"
    )
    return (
        f"the train step does not fit one chip's {memory['hbm_bytes'] / aot.GIB:.1f} GiB HBM{over} at global batch "
        f"{result['global_batch']}; lower batch_size (--search_batch finds the largest), set model.remat=True "
        f"(now {config.model.remat}) or model.remat_policy=full (now {config.model.remat_policy!r}), a smaller "
        f"model.lexicon.chunk (now {config.model.lexicon.chunk}), or shard more (mesh preset fsdp or fsdp_tp)"
    )


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
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(report, f, indent=1)

    config = _CONFIG.value
    try:
        tpu = aot.parse_slice(_TOPOLOGY.value, _NUM_SLICES.value)
        target = aot.SliceTarget(config, tpu, _WORKDIR.value or tempfile.mkdtemp(prefix="ela_compile_"))
        report = {
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
            search_batch(target, report, write, _TOLERANCE.value)
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
    if step is None:
        sys.exit(f"compile error: not even a per-chip batch of 1 fits; {advice(report['tries'][-1], config)}")
    if not step["fits"]:
        sys.exit(f"compile error: {advice(step, config)}")


if __name__ == "__main__":
    app.run(main)
