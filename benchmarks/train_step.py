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
import statistics
import sys
import time

import common


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
    parser.add_argument("--smoke", action="store_true", help="tiny towers, 2 steps: checks the code path in seconds")
    parser.add_argument("--output", default="", help="JSON path (default benchmarks/results/train_step_<...>.json)")
    return parser.parse_args(argv)


def build_config(args):
    import jax

    config = common.benchmark_config(args.config, args.vocab, args.smoke)
    if args.smoke:
        args.steps, args.repeats, args.max_batch = 2, 2, min(args.max_batch, 16)
    elif args.config == "ela_b16" and jax.default_backend() == "cpu":
        sys.exit(
            "train_step: --config ela_b16 is a GPU/TPU measurement (a B/16 step takes minutes on a CPU); "
            "use --smoke to check the code path here"
        )
    if args.batch_size:
        config.batch_size = args.batch_size
    config.log.progress = False
    return config


def is_out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def time_batch(runner: common.JaxStep, batch_size: int, steps: int, repeats: int) -> dict:
    """Compiles for `batch_size` (first step), then `repeats` x `steps` timed updates."""
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
        "device_memory": runner.device_memory(),
    }


def fits(runner: common.JaxStep, batch_size: int) -> bool:
    """Whether two steps at `batch_size` run (the first one compiles); a failed try rebuilds the donated state."""
    try:
        runner.run(runner.device_batch(runner.host_batch(batch_size)), 2)
        return True
    except Exception as error:  # XLA reports OOM as a runtime error whose text names RESOURCE_EXHAUSTED
        if not is_out_of_memory(error):
            raise
        runner.state = runner.factory.create(runner.config.seed)
        return False


def largest_fitting_batch(runner: common.JaxStep, start: int, args) -> tuple[dict, list[dict]]:
    """Doubles the batch from `start` while two steps fit in device memory (up to --max_batch), then times the
    largest that fitted. Returns its timing and the log of every try."""
    tried, best, batch_size = [], None, start
    while batch_size <= args.max_batch:
        fitted = fits(runner, batch_size)
        tried.append({"batch_size": batch_size, "fits": fitted})
        if not fitted:
            break
        best, batch_size = batch_size, batch_size * 2
    if best is None:
        sys.exit(f"train_step: batch {start} does not fit in device memory; lower --batch_size")
    return time_batch(runner, best, args.steps, args.repeats), tried


def pairs_per_second(result: dict) -> float:
    return result["batch_size"] / statistics.median(result["step_seconds"])


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = build_config(args)
    import jax

    machine = common.machine()
    runner = common.JaxStep(config)
    if args.search_batch:
        result, tried = largest_fitting_batch(runner, config.batch_size, args)
    else:
        result, tried = time_batch(runner, config.batch_size, args.steps, args.repeats), []
    config = runner.config
    accelerator = jax.default_backend() != "cpu"
    matmul_dtype = config.model.dtype if accelerator else "float32"
    matmul_size = args.matmul_size or (8192 if accelerator else 2048)
    if args.smoke:
        matmul_size = 256
    peak = common.measured_matmul_rate(matmul_size, matmul_dtype)
    flops_by_part = common.forward_flops_per_pair(config)
    train_flops = common.train_flops_per_pair(config)
    throughput = pairs_per_second(result)
    achieved = throughput * train_flops
    payload = {
        "benchmark": "train_step",
        "config": args.config,
        "smoke": args.smoke,
        "vocab_size": config.model.vocab_size,
        "dtype": config.model.dtype,
        "batch_size": result["batch_size"],
        "steps_per_repeat": args.steps,
        "first_step_seconds": result["first_step_seconds"],
        "step_seconds": result["step_seconds"],
        "step_seconds_median": statistics.median(result["step_seconds"]),
        "pairs_per_second": throughput,
        "forward_flops_per_pair": flops_by_part,
        "train_flops_per_pair": train_flops,
        "train_flops_note": "3 x forward FLOPs of everything the objective computes (towers, heads, lexicon heads, "
        "MLM pass); norms, activations and losses left out",
        "achieved_flops_per_second": achieved,
        "matmul": {"size": matmul_size, "dtype": matmul_dtype, "flops_per_second": peak},
        "fraction_of_matmul_rate": achieved / peak,
        "device_memory": result["device_memory"],
        "batch_search": tried,
        "machine": machine,
    }
    name = f"train_step_{args.config}" + ("_bert" if args.vocab == "bert" else "") + ("_smoke" if args.smoke else "")
    path = common.write_results(name, payload, args.output or None)
    common.print_table(
        ["config", "|V|", "batch", "step s", "pairs/s", "TFLOP/s", "matmul TFLOP/s", "fraction"],
        [
            [
                args.config,
                config.model.vocab_size,
                result["batch_size"],
                payload["step_seconds_median"],
                throughput,
                achieved / 1e12,
                peak / 1e12,
                achieved / peak,
            ]
        ],
    )
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
