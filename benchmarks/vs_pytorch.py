"""Our jitted train step against the same model and objective written the way a PyTorch user would
(`benchmarks/torch_ela.py`: transformers BertForMaskedLM + ViTModel, eager and torch.compile), trained side by side
on the same batch in one process, at the demo config and at |V| = 30522 (bert-base-uncased WordPiece).

Speed: JAX and torch repetitions are interleaved (rotating order), so background load hits both alike; each
reports the median step time over the repeats. Memory: each framework trains in a child process of its own (only
that framework imported) and reports its resident-set high-water mark (Linux VmHWM) twice: over the whole run
(imports, model, compilation included) and over the steady training steps alone (the mark is reset after the
warm-up steps through /proc/self/clear_refs, after the child hands freed heap memory back as the training loop does:
ela_jax.host_allocator).

Run: python benchmarks/vs_pytorch.py [--vocab both|config|bert] [--repeats 5] [--steps 3] [--no_compile] [--no_memory]
     [--threads 1]  (one core per framework: the per-core comparison, benchmarks/results/vs_pytorch_1thread.json)
Writes benchmarks/results/vs_pytorch.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

import common
from ela_jax import host_allocator

TARGETS = {"bert": 1.2, "config": 1.0}  # pairs/s ratio over eager PyTorch the project aims for


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="configs/<name>.py (its objective must be the demo's kind)")
    parser.add_argument("--vocab", choices=("both", "config", "bert"), default="both")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's batch_size")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    parser.add_argument("--no_compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-framework memory child processes")
    parser.add_argument(
        "--threads",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: both frameworks on one core (the process pinned to one core, torch.set_num_threads(1), XLA:CPU "
        "without its Eigen thread pool), the per-core comparison; 0: each framework's default threading",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny towers, 1 repeat: checks the code path")
    parser.add_argument("--output", default="", help="JSON path (default benchmarks/results/vs_pytorch.json)")
    parser.add_argument("--memory_child", choices=("jax", "torch_eager", "torch_compile"), help=argparse.SUPPRESS)
    parser.add_argument("--vocab_child", choices=("config", "bert"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def limit_threads(threads: int) -> None:
    """threads == 1: one core for each framework (the memory children inherit the affinity and environment). Torch
    takes its thread count from OMP_NUM_THREADS when first imported, so the JAX memory child never imports it."""
    if threads == 1:
        common.run_on_one_core()


def build_config(args, vocab: str):
    config = common.benchmark_config(args.config, vocab, args.smoke)
    # The form benchmarks/torch_ela.py implements, so both sides run the same objective (the demo's lex_contrastive
    # costs the same: one [batch, vocab] head and a pooled loss).
    config.objective.ela.loss = "soft_ce"
    if args.batch_size:
        config.batch_size = args.batch_size
    config.log.progress = False
    return config


# --- memory, one framework per child process


def rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args) -> None:
    """Trains `args.steps` steps with one framework and prints its memory marks as JSON on the last line."""
    config = build_config(args, args.vocab_child)
    host_batch, vocabulary = batch_and_vocabulary(config)
    if args.memory_child == "jax":
        runner = common.JaxStep(config)  # same batch: world_batch is deterministic in (config, seed)
        batch = runner.device_batch(host_batch)
        run = lambda steps: runner.run(batch, steps)  # noqa: E731
    else:
        import torch_ela

        trainer = torch_ela.TorchTrainer(config, vocabulary, compile=args.memory_child == "torch_compile")
        batch = torch_ela.torch_batch(host_batch)
        run = lambda steps: trainer.run(batch, steps)  # noqa: E731
    before_steps = rss_bytes("VmRSS")
    run(2)
    # Every child runs under ela_jax's malloc settings (importing ela_jax applies them) and hands freed heap pages
    # back after warm-up, as the training loop does after compiling (ela_jax.host_allocator).
    host_allocator.release_free_memory()
    whole_run_peak = rss_bytes("VmHWM")
    reset = reset_high_water_mark()
    steady_before = rss_bytes("VmRSS")
    run(args.steps)
    print(
        json.dumps(
            {
                "rss_before_first_step": before_steps,
                "peak_rss_whole_run": whole_run_peak,
                "peak_rss_training_steps": rss_bytes("VmHWM") if reset else None,
                "rss_before_training_steps": steady_before,
            }
        )
    )


def batch_and_vocabulary(config):
    """The embedded-world batch and what the objective needs of the vocabulary (the fields of
    `ela_jax.training.step.Vocabulary`), built without importing JAX, so a torch child holds torch alone."""
    from ela_jax import config as config_lib
    from ela_jax.data import tokenizer as tokenizer_lib

    tokenizer = tokenizer_lib.from_config(config.tokenizer, tempfile.mkdtemp(prefix="ela_bench_"))
    if config.model.vocab_size == config_lib.VOCAB_SIZE_FROM_TOKENIZER:
        config.model.vocab_size = tokenizer.vocab_size
    special = np.zeros(tokenizer.vocab_size, bool)
    special[list(tokenizer.special_ids)] = True
    vocabulary = types.SimpleNamespace(
        content=tokenizer.content_vocab(config.objective.ela.stopwords), special=special, mask_id=tokenizer.mask_id
    )
    return common.world_batch(config, tokenizer, config.batch_size), vocabulary


def measure_memory(args, vocab: str, frameworks: list[str]) -> dict:
    results = {}
    for framework in frameworks:
        command = [sys.executable, os.path.abspath(__file__), "--memory_child", framework, "--vocab_child", vocab]
        command += ["--config", args.config, "--steps", str(args.steps)]
        command += ["--batch_size", str(args.batch_size), "--threads", str(args.threads)]
        command += ["--smoke"] if args.smoke else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            results[framework] = {"error": done.stderr.strip().splitlines()[-1:]}
            continue
        results[framework] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# --- speed, interleaved in this process


def measure_speed(args, vocab: str) -> dict:
    import torch_ela

    config = build_config(args, vocab)
    runner = common.JaxStep(config)
    host_batch = runner.host_batch()
    jax_batch, torch_batch = runner.device_batch(host_batch), torch_ela.torch_batch(host_batch)
    first_step, runners, errors = {}, {}, {}
    start = time.perf_counter()
    runner.run(jax_batch, 2)
    first_step["jax"] = time.perf_counter() - start
    runners["jax"] = lambda: runner.run(jax_batch, args.steps) / args.steps
    for name, compile_ in (("torch_eager", False), ("torch_compile", True)):
        if compile_ and args.no_compile:
            continue
        trainer = torch_ela.TorchTrainer(config, runner.vocabulary, compile=compile_)
        start = time.perf_counter()
        try:
            trainer.run(torch_batch, 2)
        except Exception as error:  # torch.compile needs a working C++ toolchain; report, do not stop
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            continue
        first_step[name] = time.perf_counter() - start
        runners[name] = lambda trainer=trainer: trainer.run(torch_batch, args.steps) / args.steps
    timings = common.interleaved_medians(runners, args.repeats)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    batch_size = config.batch_size
    return {
        "vocab_size": config.model.vocab_size,
        "batch_size": batch_size,
        "step_seconds": timings,
        "step_seconds_median": medians,
        "pairs_per_second": {name: batch_size / seconds for name, seconds in medians.items()},
        "jax_speedup_over": {name: medians[name] / medians["jax"] for name in medians if name != "jax"},
        "first_two_steps_seconds": first_step,
        "errors": errors,
        "frameworks": list(runners),
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> dict:
    args = parse_args(argv)
    limit_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return {}
    if args.smoke:
        args.repeats, args.steps = 1, 1
    # The memory children compile the same step again: let them read this run's compilations from a cache.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ela_bench_jax_cache_"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    machine = common.machine()
    vocabs = ("config", "bert") if args.vocab == "both" else (args.vocab,)
    payload = {
        "benchmark": "vs_pytorch",
        "config": args.config,
        "smoke": args.smoke,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "threads": "one core per framework" if args.threads == 1 else "each framework's default",
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_threads": torch_threads(),
        "memory_method": "resident-set high-water mark (VmHWM) of a child process running only one framework; "
        "peak_rss_training_steps is reset after 2 warm-up steps and a malloc_trim (compilation excluded), "
        "every process under ela_jax.host_allocator's settings",
        "settings": {},
        "machine": machine,
    }
    settings = payload["settings"]
    for vocab in vocabs:
        result = measure_speed(args, vocab)
        if not args.no_memory:
            memory = measure_memory(args, vocab, result["frameworks"])
            result["memory"] = memory
            jax_peak = memory.get("jax", {}).get("peak_rss_training_steps")
            result["jax_peak_memory_ratio_to"] = {
                name: jax_peak / marks["peak_rss_training_steps"]
                for name, marks in memory.items()
                if name != "jax" and jax_peak and marks.get("peak_rss_training_steps")
            }
        result["target_speedup_over_torch_eager"] = TARGETS[vocab]
        settings[vocab] = result
        # Written after each setting, so a long run that is stopped keeps what it measured.
        name = "vs_pytorch" + ("_1thread" if args.threads == 1 else "") + ("_smoke" if args.smoke else "")
        path = common.write_results(name, payload, args.output or None)
    rows = []
    for vocab, result in settings.items():
        for name in result["frameworks"]:
            memory = result.get("memory", {}).get(name, {})
            peak = memory.get("peak_rss_training_steps")
            rows.append(
                [
                    result["vocab_size"],
                    name,
                    result["step_seconds_median"][name],
                    result["pairs_per_second"][name],
                    1.0 if name == "jax" else result["jax_speedup_over"][name],
                    f"{peak / 2**20:.0f}" if peak else "-",
                ]
            )
    common.print_table(["|V|", "framework", "step s", "pairs/s", "jax speed-up", "train peak RSS MiB"], rows)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
