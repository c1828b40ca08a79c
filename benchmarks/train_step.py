"""Train-step throughput of the real jitted step: image-text pairs/s, achieved FLOP/s (FLOPs counted analytically,
lexicon heads included) and their fraction of the same device's measured matmul rate, measured in one run.

Run: python benchmarks/train_step.py                       # demo config, this machine (CPU: about 3 minutes)
     python benchmarks/train_step.py --vocab bert           # the demo at |V| = 30522
     python benchmarks/train_step.py --config ela_b16 --search_batch   # ViT-B/16 + BERT-base, bf16 (GPU only)
     python benchmarks/train_step.py --smoke                # any config shrunk to seconds (tests the code path)
Writes benchmarks/results/train_step_<config>[_bert].json (or --output) and prints a table.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time

import common
from ela_jax import config as config_lib


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="configs/<name>.py (ela_b16: ViT-B/16 + BERT-base, bf16)")
    parser.add_argument("--vocab", choices=("config", "bert"), default="config", help="bert: |V| = 30522")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's batch_size")
    parser.add_argument("--search_batch", action="store_true", help="double the batch until it no longer fits")
    parser.add_argument("--max_batch", type=int, default=4096, help="largest batch --search_batch tries")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    parser.add_argument("--matmul_size", type=int, default=0, help="0: 2048 on CPU, 8192 on accelerators")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="the device's datasheet dense peak in the model dtype (989 for an H100/H200 SXM in bf16): also reports "
        "model FLOP/s as a fraction of it (MFU); 0: not reported",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override as a Python literal, e.g. --set model.remat=False (repeatable)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny towers, 2 steps: checks the code path in seconds")
    parser.add_argument("--output", default="", help="JSON path (default benchmarks/results/train_step_<...>.json)")
    return parser.parse_args(argv)


def build_config(args):
    import jax

    config = common.benchmark_config(args.config, args.vocab, args.smoke)
    if args.smoke:
        args.steps, args.repeats, args.max_batch = 2, 2, min(args.max_batch, 16)
        args.batch_size = min(args.batch_size, 4)  # a search from the GPU's start batch still runs: 4, 8, 16
    elif args.config == "ela_b16" and jax.default_backend() == "cpu":
        sys.exit(
            "train_step: --config ela_b16 is a GPU/TPU measurement (a B/16 step takes minutes on a CPU); "
            "use --smoke to check the code path here"
        )
    if args.batch_size:
        config.batch_size = args.batch_size
    for key, value in map(parse_override, args.set):
        config_lib.set_dotted(config, key, value)
    config.log.progress = False
    return config


def parse_override(text: str) -> tuple[str, object]:
    key, separator, value = text.partition("=")
    if not separator:
        sys.exit(f"train_step: --set {text!r} is not KEY=VALUE")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word: a string value


def is_out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def time_batch(runner: common.JaxStep, batch_size: int, steps: int, repeats: int) -> dict:
    """Compiles for `batch_size` (first step), then `repeats` x `steps` timed updates. Raises what the device raises
    (out of memory included)."""
    runner.config.unlock()
    runner.config.batch_size = batch_size
    runner.config.lock()
    batch = runner.device_batch(runner.host_batch(batch_size))
    start = time.perf_counter()
    runner.run(batch, 1)
    compile_seconds = time.perf_counter() - start
    runner.run(batch, 1)  # a second warm step: allocator and thread pools settle
    step_seconds = [runner.run(batch, steps) / steps for _ in range(repeats)]
    return {
        "batch_size": batch_size,
        "first_step_seconds": compile_seconds,
        "step_seconds": step_seconds,
        "pairs_per_second": batch_size / statistics.median(step_seconds),
        # per pair, yet the in-batch similarity matrices grow with the batch
        "forward_flops_per_pair": common.forward_flops_per_pair(runner.config),
        "train_flops_per_pair": common.train_flops_per_pair(runner.config),
        "device_memory": runner.device_memory(),
    }


def time_fitting_batches(runner: common.JaxStep, start: int, args, report) -> list[dict]:
    """Times the batch `start`, then doubles it (up to --max_batch) until a batch runs out of device memory; if `start`
    itself does not fit, halves it until one does. `report(timed, tried)` runs after each try, so that a time limit
    cuts the search short without losing the batches already measured. Returns the timings."""
    timed, tried = [], []
    batch_size, too_large = start, args.max_batch + 1
    while 1 <= batch_size < too_large:
        try:
            timed.append(time_batch(runner, batch_size, args.steps, args.repeats))
        except Exception as error:  # XLA reports OOM as a runtime error whose text names RESOURCE_EXHAUSTED
            if not is_out_of_memory(error):
                raise
            runner.state = runner.factory.create(runner.config.seed)  # the failed step consumed the donated state
            too_large = batch_size
        tried.append({"batch_size": batch_size, "fits": batch_size < too_large})
        report(timed, tried)
        if tried[-1]["fits"]:
            batch_size *= 2
        elif timed:
            break
        else:
            batch_size //= 2
    if not timed:
        sys.exit("train_step: not even a batch of 1 fits in device memory")
    return timed


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = build_config(args)
    import jax

    machine = common.machine()
    runner = common.JaxStep(config)
    accelerator = jax.default_backend() != "cpu"
    matmul_dtype = config.model.dtype if accelerator else "float32"
    matmul_size = 256 if args.smoke else args.matmul_size or (8192 if accelerator else 2048)
    # Measured first: the card's rate does not depend on the batch, and every partial report below needs it.
    peak = common.measured_matmul_rate(matmul_size, matmul_dtype)
    matmul = {"size": matmul_size, "dtype": matmul_dtype, "flops_per_second": peak}
    name = f"train_step_{args.config}" + ("_bert" if args.vocab == "bert" else "") + ("_smoke" if args.smoke else "")
    written = {}

    def report(timed: list[dict], tried: list[dict]) -> None:
        if timed:
            written["payload"] = payload(args, runner.config, machine, matmul, timed, tried)
            written["path"] = common.write_results(name, written["payload"], args.output or None)

    if args.search_batch:
        time_fitting_batches(runner, config.batch_size, args, report)
    else:
        report([time_batch(runner, config.batch_size, args.steps, args.repeats)], [])
    result = written["payload"]
    common.print_table(
        ["config", "|V|", "batch", "step s", "pairs/s", "TFLOP/s", "matmul TFLOP/s", "fraction"],
        [
            [
                args.config,
                result["vocab_size"],
                timing["batch_size"],
                statistics.median(timing["step_seconds"]),
                timing["pairs_per_second"],
                timing["pairs_per_second"] * timing["train_flops_per_pair"] / 1e12,
                peak / 1e12,
                timing["pairs_per_second"] * timing["train_flops_per_pair"] / peak,
            ]
            for timing in result["timed_batches"]
        ],
    )
    print(f"wrote {written['path']}")
    return result


def payload(args, config, machine: dict, matmul: dict, timed: list[dict], tried: list[dict]) -> dict:
    """The JSON of the run so far: the fastest timed batch (pairs/s) as the headline, every timed batch beside it."""
    best = max(timed, key=lambda timing: timing["pairs_per_second"])
    achieved = best["pairs_per_second"] * best["train_flops_per_pair"]
    return {
        "benchmark": "train_step",
        "config": args.config,
        "smoke": args.smoke,
        "vocab_size": config.model.vocab_size,
        "dtype": config.model.dtype,
        "batch_size": best["batch_size"],
        "steps_per_repeat": args.steps,
        "first_step_seconds": best["first_step_seconds"],
        "step_seconds": best["step_seconds"],
        "step_seconds_median": statistics.median(best["step_seconds"]),
        "pairs_per_second": best["pairs_per_second"],
        "forward_flops_per_pair": best["forward_flops_per_pair"],
        "train_flops_per_pair": best["train_flops_per_pair"],
        "train_flops_note": "3 x forward FLOPs of everything the objective computes (towers, heads, lexicon heads, "
        "MLM pass); norms, activations and losses left out",
        "achieved_flops_per_second": achieved,
        "matmul": matmul,
        "fraction_of_matmul_rate": achieved / matmul["flops_per_second"],
        "datasheet_peak_flops_per_second": args.peak_tflops * 1e12 or None,
        "fraction_of_datasheet_peak": achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        "device_memory": best["device_memory"],
        "overrides": args.set,
        "timed_batches": timed,
        "batch_search": tried,
        "machine": machine,
    }


if __name__ == "__main__":
    main()
