"""How each framework uses a second core: our attention layer and one ViT block (`ela_jax.models.layers`) against
transformers' `ViTAttention` / `ViTLayer`, forward + backward at the demo image tower's shape (batch 128, 65
tokens, width 96, 3 heads), once pinned to one core each and once with each framework's default threading. Each
setting runs in a child process of its own (XLA:CPU reads its thread flags once per process).

Run: python benchmarks/thread_scaling.py [--repeats 7] [--calls 10] [--smoke]
Writes benchmarks/results/thread_scaling.json and prints a table (milliseconds per forward + backward).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import common


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds; medians are reported")
    parser.add_argument("--calls", type=int, default=10, help="calls per timed round")
    parser.add_argument("--smoke", action="store_true", help="batch 4, 1 round: checks the code path")
    parser.add_argument("--output", default="", help="JSON path")
    parser.add_argument("--child", choices=("one_core", "default"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def shapes(smoke: bool) -> dict:
    tower = common.load_config("demo").model.image
    tokens = (tower.image_size // tower.patch_size) ** 2 + 1  # patches + CLS
    return {"batch": 4 if smoke else 128, "tokens": tokens, "width": tower.width, "heads": tower.num_heads,
            "mlp_dim": tower.mlp_dim}  # fmt: skip


def jax_runners(shape: dict, calls: int) -> dict:
    import jax
    import jax.numpy as jnp

    from ela_jax.models import layers

    x = jnp.asarray(np.random.default_rng(0).standard_normal((shape["batch"], shape["tokens"], shape["width"])))
    x = x.astype(jnp.float32)
    modules = {
        "attention": layers.MultiHeadAttention(shape["heads"]),
        "block": layers.TransformerBlock(
            num_heads=shape["heads"],
            mlp_dim=shape["mlp_dim"],
            pre_norm=True,
            layer_norm_eps=1e-12,
            gelu_approximate=False,
        ),
    }
    runners = {}
    for name, module in modules.items():
        params = module.init(jax.random.key(0), x, None)
        step = jax.jit(jax.grad(lambda p, x, m=module: jnp.sum(m.apply(p, x, None) ** 2)))
        jax.block_until_ready(step(params, x))

        def run(step=step, params=params) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                out = step(params, x)
            jax.block_until_ready(out)
            return (time.perf_counter() - start) / calls

        runners[f"jax {name}"] = run
    return runners


def torch_runners(shape: dict, calls: int) -> dict:
    import torch
    import transformers
    from transformers.models.vit import modeling_vit

    config = transformers.ViTConfig(
        hidden_size=shape["width"], num_attention_heads=shape["heads"], intermediate_size=shape["mlp_dim"]
    )
    x = torch.randn(shape["batch"], shape["tokens"], shape["width"], requires_grad=True)
    modules = {"attention": modeling_vit.ViTAttention(config), "block": modeling_vit.ViTLayer(config)}
    runners = {}
    for name, module in modules.items():

        def run(module=module) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                module.zero_grad(set_to_none=True)
                out = module(x)
                (out[0] if isinstance(out, tuple) else out).pow(2).sum().backward()
            return (time.perf_counter() - start) / calls

        run()  # warm-up
        runners[f"torch {name}"] = run
    return runners


def child(args) -> None:
    if args.child == "one_core":
        common.run_on_one_core()
    shape = shapes(args.smoke)
    import torch  # after run_on_one_core: it reads OMP_NUM_THREADS on import

    runners = {**jax_runners(shape, args.calls), **torch_runners(shape, args.calls)}
    timings = common.interleaved_medians(runners, args.repeats)
    print(json.dumps({
        "torch_threads": torch.get_num_threads(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "median_ms": {name: 1e3 * statistics.median(values) for name, values in timings.items()},
        "min_ms": {name: 1e3 * min(values) for name, values in timings.items()},
    }))  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.repeats, args.calls = 1, 1
    if args.child:
        child(args)
        return {}
    settings = {"one thread each": "one_core", "default threads": "default"}
    command = [sys.executable, os.path.abspath(__file__), "--repeats", str(args.repeats)]
    command += ["--calls", str(args.calls)] + (["--smoke"] if args.smoke else [])
    results = {}
    for setting, mode in settings.items():
        done = subprocess.run(command + ["--child", mode], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{setting}: child failed:\n{done.stderr[-3000:]}")
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    payload = {
        "benchmark": "thread_scaling",
        "smoke": args.smoke,
        "shape": shapes(args.smoke),
        "repeats": args.repeats,
        "calls_per_repeat": args.calls,
        "settings": results,
        "speedup_from_default_threads": {
            name: results["one thread each"]["median_ms"][name] / results["default threads"]["median_ms"][name]
            for name in results["default threads"]["median_ms"]
        },
        "machine": common.machine(),
    }
    path = common.write_results("thread_scaling" + ("_smoke" if args.smoke else ""), payload, args.output or None)
    rows = [
        [name, results["one thread each"]["median_ms"][name], results["default threads"]["median_ms"][name], speedup]
        for name, speedup in payload["speedup_from_default_threads"].items()
    ]
    common.print_table(["fwd + bwd", "one thread ms", "default threads ms", "speed-up from threads"], rows)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
