"""Lexicon head: the impls of the max-pooled [batch, patches, vocab] logits (dense, chunked, argmax), forward +
backward, interleaved in one run.

Peak memory is XLA's own plan for the compiled gradient (temporaries + arguments + outputs, from
`compiled.memory_analysis()`), which is what decides whether a batch fits on a device; time is the median wall time of
the same compiled function on this machine, the settings timed in rotating order so that background load hits each
alike. Writes benchmarks/results/lexicon_head_argmax.json (or --output).

With --step_config (e.g. demo), it times the whole jitted train step at |V| = 30522 instead, one step per setting
(model.lexicon.impl and chunk), interleaved, with XLA's planned peak memory of each compiled step; it writes
benchmarks/results/lexicon_step_argmax.json.

Run: python benchmarks/lexicon_head.py [--batch 64] [--patches 196] [--vocab 30522] [--width 768]
         [--settings chunked:2048,argmax:2048,dense:0] [--untimed dense:0] [--repeats 3]
     python benchmarks/lexicon_head.py --step_config demo --settings chunked:2048,argmax:2048 --untimed "" [--steps 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import common
import jax
import jax.numpy as jnp
import numpy as np

from ela_jax.models import lexicon

TARGET_MEMORY_RATIO = 8.0  # chunked at least 8x below dense at batch 64, 196 patches, |V| = 30522
TARGET_SPEEDUP = 1.2  # argmax at least 20% faster than chunked (same chunk), at no more planned memory


def head_gradient(impl: str, chunk: int):
    """d/d(features, kernel, bias) of the ELA-shaped use of the head: saturated max-pool -> a scalar."""

    def loss(features, kernel, bias, mask):
        pooled = lexicon.pool_vocab_logits(features, kernel, bias, mask, ("max",), chunk, impl)["max"]
        return jnp.sum(lexicon.saturate(pooled))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def compile_setting(setting: str, args: tuple) -> dict:
    impl, _, chunk = setting.partition(":")
    compiled = head_gradient(impl, int(chunk or 0)).lower(*args).compile()
    memory = compiled.memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    return {
        "setting": setting,
        "impl": impl,
        "chunk": int(chunk or 0),
        "peak_bytes": int(peak),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "compiled": compiled,
    }


def timer(compiled, args: tuple):
    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--vocab", type=int, default=common.BERT_VOCAB_SIZE)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--settings", default="chunked:2048,argmax:2048,dense:0", help="impl:chunk, comma separated")
    parser.add_argument("--untimed", default="dense:0", help="settings whose memory plan only is measured")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; 0: memory plans only")
    parser.add_argument("--step_config", default="", help="configs/<name>.py: time its whole train step instead")
    parser.add_argument("--steps", type=int, default=2, help="train steps per timed round (--step_config)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.step_config:
        return compare_steps(args)

    rng = np.random.default_rng(0)
    inputs = (
        jnp.asarray(rng.normal(size=(args.batch, args.patches, args.width)), jnp.float32),
        jnp.asarray(0.02 * rng.normal(size=(args.width, args.vocab)), jnp.float32),
        jnp.zeros((args.vocab,), jnp.float32),
        jnp.asarray(rng.random((args.batch, args.patches)) < 0.95),  # a few masked patches exercise the mask
    )
    runs = {setting: compile_setting(setting, inputs) for setting in args.settings.split(",")}
    timed = {s: timer(run["compiled"], inputs) for s, run in runs.items() if s not in args.untimed.split(",")}
    for run in timed.values():
        run()  # warm-up
    timings = common.interleaved_medians(timed, args.repeats)
    for setting, run in runs.items():
        del run["compiled"]
        run["seconds"] = timings.get(setting, [])
        run["seconds_median"] = statistics.median(run["seconds"]) if run["seconds"] else None
    payload = {
        "benchmark": "lexicon_head",
        "shape": {"batch": args.batch, "patches": args.patches, "vocab": args.vocab, "width": args.width},
        "dense_logits_bytes": args.batch * args.patches * args.vocab * 4,
        "runs": list(runs.values()),
        "targets": targets(runs),
        "machine": common.machine(),
    }
    path = common.write_results("lexicon_head_argmax", payload, args.output)
    common.print_table(
        ["setting", "peak MiB", "temp MiB", "median s"],
        [
            [s, f"{r['peak_bytes'] / 2**20:.0f}", f"{r['temp_bytes'] / 2**20:.0f}", r["seconds_median"] or "-"]
            for s, r in runs.items()
        ],
    )
    print(payload["targets"])
    print(f"wrote {path}")


def step_runner(config_name: str, setting: str) -> dict:
    """The config's jitted train step at |V| = 30522 with model.lexicon.impl:chunk = `setting`, and its memory plan."""
    impl, _, chunk = setting.partition(":")
    config = common.benchmark_config(config_name, "bert", smoke=False)
    config.model.lexicon.impl, config.model.lexicon.chunk = impl, int(chunk or 0)
    config.log.progress = False
    runner = common.JaxStep(config)
    batch = runner.device_batch(runner.host_batch())
    memory = runner.jitted.lower(runner.state, batch).compile().memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    runner.run(batch, 1)  # compiles (the memory plan above was a separate compile) and warms up
    return {
        "setting": setting,
        "impl": impl,
        "chunk": int(chunk or 0),
        "peak_bytes": int(peak),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "runner": runner,
        "batch": batch,
    }


def compare_steps(args) -> None:
    runs = {setting: step_runner(args.step_config, setting) for setting in args.settings.split(",")}
    timers = {s: lambda r=run: r["runner"].run(r["batch"], args.steps) / args.steps for s, run in runs.items()}
    timings = common.interleaved_medians(timers, args.repeats)
    for setting, run in runs.items():
        config = run.pop("runner").config
        del run["batch"]
        run["step_seconds"] = timings[setting]
        run["step_seconds_median"] = statistics.median(timings[setting])
    payload = {
        "benchmark": "lexicon_step",
        "config": args.step_config,
        "vocab_size": config.model.vocab_size,
        "batch_size": config.batch_size,
        "steps_per_round": args.steps,
        "runs": list(runs.values()),
        "targets": targets({s: {**r, "seconds_median": r["step_seconds_median"]} for s, r in runs.items()}),
        "machine": common.machine(),
    }
    path = common.write_results("lexicon_step_argmax", payload, args.output)
    common.print_table(
        ["setting", "peak MiB", "step s"],
        [[s, f"{r['peak_bytes'] / 2**20:.0f}", r["step_seconds_median"]] for s, r in runs.items()],
    )
    print(payload["targets"])
    print(f"wrote {path}")


def targets(runs: dict) -> dict:
    """argmax vs chunked at the same chunk (speed-up and memory), chunked vs dense (memory), where both ran."""
    result = {}
    for setting, run in runs.items():
        baseline = runs.get(f"chunked:{run['chunk']}")
        if run["impl"] == "argmax" and baseline and run["seconds_median"] and baseline["seconds_median"]:
            speedup = baseline["seconds_median"] / run["seconds_median"]
            memory = run["peak_bytes"] / baseline["peak_bytes"]
            result[setting] = {
                "speedup_vs_chunked": speedup,
                "peak_memory_vs_chunked": memory,
                "target_speedup": TARGET_SPEEDUP,
                "target_met": speedup >= TARGET_SPEEDUP and memory <= 1.0,
            }
        dense = runs.get("dense:0")
        if run["impl"] == "chunked" and dense:
            ratio = dense["peak_bytes"] / run["peak_bytes"]
            result[setting] = {"memory_ratio_vs_dense": ratio, "target_memory_ratio": TARGET_MEMORY_RATIO}
    return result


if __name__ == "__main__":
    main()
