"""Where the compiled train step spends its time, op by op: a jax.profiler trace of the jitted step, each op's time
(summed over XLA:CPU's threads, or a GPU kernel's device time) attributed to the model code that produced it (the HLO
`op_name` metadata) and to its kind (matmul, copy / transpose / slice, reduction, element-wise fusion). Shares are
what to read: absolute times depend on the load.

Run: python benchmarks/profile_ops.py [--config demo] [--vocab bert] [--steps 4] [--top 25]
Writes benchmarks/results/profile_ops_<config>[_bert].json and prints the top model parts and op kinds.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

import common
import train_step
from ela_jax import config as config_lib

HLO_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w-]+)\(")
LAYER_INDEX = re.compile(r"layer_\d+")
UNATTRIBUTED = "(no op_name in the HLO: runtime or unmatched op)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="configs/<name>.py")
    parser.add_argument("--vocab", choices=("config", "bert"), default="config", help="bert: |V| = 30522")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's batch_size")
    parser.add_argument("--steps", type=int, default=4, help="traced steps (after 2 warm-up steps)")
    parser.add_argument("--top", type=int, default=25, help="rows printed per table")
    parser.add_argument("--smoke", action="store_true", help="tiny towers, 1 traced step")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--output", default="", help="JSON path")
    return parser.parse_args(argv)


def kernel_key(name: str) -> str:
    """An instruction's name as a GPU kernel carries it: XLA names a fusion's kernel `loop_add_fusion_23` after the
    instruction `loop_add_fusion.23`."""
    return re.sub(r"[.\-]", "_", name)


def op_metadata(hlo_text: str) -> dict[str, str]:
    """HLO instruction name (as `kernel_key` spells it) -> the model code it came from (jit prefix dropped, layer
    indexes merged)."""
    origin = {}
    for line in hlo_text.splitlines():
        match = HLO_INSTRUCTION.match(line)
        if match:
            op_name = re.search(r'op_name="([^"]*)"', line)
            source = re.sub(r"^jit\([^)]*\)/", "", op_name.group(1)) if op_name else UNATTRIBUTED
            origin[kernel_key(match.group(1))] = LAYER_INDEX.sub("layer_*", source)
    return origin


# Matmul kernels named by the library that runs them (cuBLAS's nvjet / xmma, CUTLASS) or by XLA's GEMM fusions.
GEMM_KERNEL = re.compile(r"^(nvjet|cutlass|sm\d+_xmma)|gemm")
DATA_MOVEMENT = ("copy", "transpose", "memcpy", "slice", "concatenate")


def op_kind(instruction: str, origin: str) -> str:
    """A coarse kind from the instruction's or kernel's name (XLA names fusions after what they hold) and its
    origin."""
    if "dot_general" in origin or "conv_general" in origin or instruction.startswith("dot"):
        return "matmul"
    if GEMM_KERNEL.search(instruction):
        return "matmul"
    if any(word in instruction for word in DATA_MOVEMENT):
        return "copy / transpose / slice"
    if "reduce" in instruction or "reduce" in origin:
        return "reduction"
    return "other fusion / element-wise"


def compiled_hlo(runner, batch) -> str:
    """The optimised HLO of the step as the runner compiled it (same shardings, mesh and axis rules)."""
    from ela_jax import parallel

    with parallel.sharding_context(runner.experiment.mesh, runner._rules):
        return runner.jitted.lower(runner.state, batch).compile().as_text()


def is_op_line(plane_name: str, line_name: str) -> bool:
    """The trace lines whose events are XLA ops named after their HLO instruction: XLA:CPU's worker threads, or an
    accelerator's "XLA Ops" line (its kernels sit on stream lines, named after the kernel, not the instruction)."""
    if plane_name.startswith("/device:"):
        return line_name == "XLA Ops" or line_name.startswith("Stream")
    return "XLAEigen" in line_name or "PjRtCpuClient" in line_name


def hlo_op(event) -> str:
    """The HLO instruction an event ran: a CPU op event is named after it; a GPU kernel names it in its `hlo_op`
    stat, except inside a CUDA graph, where the stat names the graph's command buffer and the kernel's own name is its
    fusion's."""
    op = dict(getattr(event, "stats", ())).get("hlo_op", event.name)
    return event.name if op.startswith("command_buffer") else op


def traced_op_times(runner, batch, steps: int) -> dict[str, float]:
    """Milliseconds per step of each XLA op instruction, from a profiler trace of `steps` steps (summed over XLA:CPU's
    threads on the CPU; device time on an accelerator)."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        runner.run(batch, steps)
        jax.profiler.stop_trace()
        profile = ProfileData.from_file(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0])
        times = collections.defaultdict(float)
        accelerator = jax.default_backend() != "cpu"
        seen = set()
        for plane in profile.planes:
            if accelerator != plane.name.startswith("/device:"):
                continue
            for line in plane.lines:
                seen.add(f"{plane.name}: {line.name}")
                if not is_op_line(plane.name, line.name):
                    continue
                for event in line.events:
                    if event.name.startswith("ThunkExecutor") or "Await" in event.name:
                        continue  # scheduling and waiting, not work
                    times[hlo_op(event)] += event.duration_ns / steps / 1e6
    if not times:
        sys.exit(f"profile_ops: the trace holds no XLA op events; its lines: {sorted(seen)}")
    return times


def shares(times: dict[str, float], key) -> list[dict]:
    grouped, counts = collections.defaultdict(float), collections.Counter()
    for name, milliseconds in times.items():
        grouped[key(name)] += milliseconds
        counts[key(name)] += 1
    total = sum(grouped.values())
    return [
        {"name": name, "ms_per_step": ms, "share": ms / total, "ops": counts[name]}
        for name, ms in sorted(grouped.items(), key=lambda item: -item[1])
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    config = common.benchmark_config(args.config, args.vocab, args.smoke)
    if args.batch_size:
        config.batch_size = args.batch_size
    for key, value in map(train_step.parse_override, args.set):
        config_lib.set_dotted(config, key, value)
    runner = common.JaxStep(config)
    batch = runner.device_batch(runner.host_batch())
    runner.run(batch, 2)  # compile and warm up outside the trace
    origin = op_metadata(compiled_hlo(runner, batch))
    times = traced_op_times(runner, batch, 1 if args.smoke else args.steps)
    by_part = shares(times, lambda name: origin.get(kernel_key(name), UNATTRIBUTED))
    by_kind = shares(times, lambda name: op_kind(name, origin.get(kernel_key(name), "")))
    report = {
        "benchmark": "profile_ops",
        "config": args.config,
        "vocab": args.vocab,
        "smoke": args.smoke,
        "batch_size": config.batch_size,
        "overrides": args.set,
        "op_ms_per_step": sum(times.values()),
        "ops_per_step": len(times),
        "by_kind": by_kind,
        "by_model_part": by_part[:200],
        "by_op": shares(times, lambda name: name)[:300],
        "machine": common.machine(),
    }
    name = f"profile_ops_{args.config}" + ("_bert" if args.vocab == "bert" else "") + ("_smoke" if args.smoke else "")
    output = common.write_results(name, report, args.output or None)
    print(f"op time {report['op_ms_per_step']:.0f} ms per step (summed over threads), {len(times)} ops")
    for title, rows in (("kind", by_kind), ("model part", by_part)):
        print(f"\n{'ms':>8} {'share':>6} {'ops':>5}  {title}")
        for row in rows[: args.top]:
            print(f"{row['ms_per_step']:8.1f} {100 * row['share']:5.1f}% {row['ops']:5d}  {row['name'][:110]}")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
