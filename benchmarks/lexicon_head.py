"""Lexicon head: dense vs chunked pooling of the [batch, patches, vocab] logits, forward + backward.

Peak memory is XLA's own plan for the compiled gradient (temporaries + arguments + outputs, from
`compiled.memory_analysis()`), which is what decides whether a batch fits on a device; time is the median wall time of
the same compiled function on this machine. Writes benchmarks/results/lexicon_head.json.

Run: python benchmarks/lexicon_head.py [--batch 64] [--patches 196] [--vocab 30522] [--width 768] [--chunks 0,4096,2048,1024]
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

TARGET_MEMORY_RATIO = 8.0  # target: chunked at least 8x below dense at batch 64, 196 patches, |V| = 30522


def head_gradient(chunk: int):
    """d/d(features, kernel, bias) of the ELA-shaped use of the head: saturated max-pool -> a scalar."""

    def loss(features, kernel, bias, mask):
        pooled = lexicon.pool_vocab_logits(features, kernel, bias, mask, ("max",), chunk)["max"]
        return jnp.sum(lexicon.saturate(pooled))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def measure(chunk: int, args: tuple, repeats: int) -> dict:
    gradient = head_gradient(chunk)
    compiled = gradient.lower(*args).compile()
    memory = compiled.memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    times = []
    if repeats:
        jax.block_until_ready(compiled(*args))  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {
        "chunk": chunk,
        "peak_bytes": int(peak),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "seconds_median": statistics.median(times) if times else None,
        "seconds": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--vocab", type=int, default=common.BERT_VOCAB_SIZE)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--chunks", default="0,4096,2048,1024", help="0 is the dense head")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; 0: memory plan only")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    inputs = (
        jnp.asarray(rng.normal(size=(args.batch, args.patches, args.width)), jnp.float32),
        jnp.asarray(0.02 * rng.normal(size=(args.width, args.vocab)), jnp.float32),
        jnp.zeros((args.vocab,), jnp.float32),
        jnp.ones((args.batch, args.patches), bool),
    )
    runs = [measure(int(chunk), inputs, args.repeats) for chunk in args.chunks.split(",")]
    dense = next(run for run in runs if run["chunk"] == 0)
    for run in runs:
        run["memory_ratio_vs_dense"] = dense["peak_bytes"] / run["peak_bytes"]
        if run["seconds_median"] is not None:
            run["time_ratio_vs_dense"] = run["seconds_median"] / dense["seconds_median"]
    best = max(runs, key=lambda run: run["memory_ratio_vs_dense"])
    payload = {
        "benchmark": "lexicon_head",
        "shape": {"batch": args.batch, "patches": args.patches, "vocab": args.vocab, "width": args.width},
        "dense_logits_bytes": args.batch * args.patches * args.vocab * 4,
        "runs": runs,
        "target_memory_ratio": TARGET_MEMORY_RATIO,
        "target_met": best["memory_ratio_vs_dense"] >= TARGET_MEMORY_RATIO,
        "machine": common.machine(),
    }
    path = common.write_results("lexicon_head", payload, args.output)
    common.print_table(
        ["chunk", "peak MiB", "memory ratio", "median s", "time ratio"],
        [
            [
                run["chunk"] or "dense",
                f"{run['peak_bytes'] / 2**20:.0f}",
                f"{run['memory_ratio_vs_dense']:.1f}x",
                "-" if run["seconds_median"] is None else f"{run['seconds_median']:.2f}",
                "-" if run["seconds_median"] is None else f"{run['time_ratio_vs_dense']:.2f}",
            ]
            for run in runs
        ],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
