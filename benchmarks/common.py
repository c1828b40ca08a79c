"""What the step benchmarks share: configs by name, the real jitted train step on realistic batches, analytic FLOPs,
the device's measured matmul rate, machine facts and JSON output.

Imported by the scripts beside it (`python benchmarks/X.py` puts this folder on sys.path).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
sys.path.insert(0, REPO)  # `configs` is importable from a checkout without installing

import ela_jax  # noqa: E402
from ela_jax import host_allocator  # noqa: E402

host_allocator.configure()  # before XLA:CPU's threads start (ela_jax.host_allocator), as the JAX modules do

BERT_VOCAB_SIZE = 30522
MAX_DISTINCT_PAIRS = 512


# --- configs


def b16_config():
    """ViT-B/16 + BERT-base (|V| = 30522) with the demo's objective, bfloat16 compute: the GPU benchmark's model."""
    from configs import demo
    from ela_jax import config as config_lib

    config = demo.get_config()
    config.model = config_lib.b16_model()
    config.model.dtype = "bfloat16"
    config.model.global_pool = "cls"
    config.data.image_size = 224
    config.tokenizer.vocab = "bert-base-uncased"
    config.tokenizer.max_length = 32
    config.model.text.max_position_embeddings = 512
    config.batch_size = 256
    return config


def load_config(name: str):
    """`configs/<name>.py:get_config()` with its data switched to the embedded world at the model's image size: the
    benchmarks feed world pairs (model and objective are what they measure). `ela_b16` falls back to `b16_config()`
    where no such file exists."""
    if name == "ela_b16" and not os.path.isfile(os.path.join(REPO, "configs", "ela_b16.py")):
        config = b16_config()
    else:
        config = importlib.import_module(f"configs.{name}").get_config()
    config.data.name = "world"
    config.data.image_size = config.model.image.image_size
    if "eval_name" in config.data:
        config.data.eval_name = ""
    return config


def bert_vocab(config):
    """The config with the bert-base-uncased WordPiece vocabulary (|V| = 30522), as the paper's lexicon."""
    config.tokenizer.vocab = "bert-base-uncased"
    config.model.vocab_size = -1
    return config


def benchmark_config(name: str, vocab: str, smoke: bool):
    """configs/<name>.py, with the bert-base-uncased vocabulary when vocab == "bert", shrunk to tiny towers for
    --smoke: the preamble every benchmark script shares."""
    config = load_config(name)
    if vocab == "bert":
        bert_vocab(config)
    if smoke:
        shrink_for_smoke(config)
    return config


def shrink_for_smoke(config):
    """The same objective and code path on towers small enough for a CPU test (seconds, not minutes)."""
    from ela_jax import config as config_lib

    dtype, vocab = config.model.dtype, config.tokenizer.vocab
    config.model = config_lib.micro_model()
    config.model.dtype = dtype
    config.model.global_pool = "mean"
    config.data.image_size = 32
    config.tokenizer.vocab = vocab
    config.tokenizer.max_length = 16
    config.batch_size = 8
    return config


# --- the real train step on realistic batches


class JaxStep:
    """The training loop's own jitted step (`Experiment.train_step`), its state, and batches of embedded-world pairs
    tokenised by the config's tokenizer."""

    def __init__(self, config, workdir: str | None = None):
        import flax.linen as nn
        import jax

        from ela_jax import parallel
        from ela_jax.experiment import Experiment

        self.workdir = workdir or tempfile.mkdtemp(prefix="ela_bench_")
        self.experiment = Experiment.build(config, self.workdir)
        self.config = config = self.experiment.config
        self.factory = self.experiment.state_factory()
        self.vocabulary = self.experiment.vocabulary()
        self.jitted = self.experiment.train_step(self.factory)
        self.state = self.factory.create(config.seed)
        self._rules = parallel.logical_rules(config.mesh)
        self._nn, self._jax, self._parallel = nn, jax, parallel

    def host_batch(self, batch_size: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        return world_batch(self.config, self.experiment.tokenizer, batch_size or self.config.batch_size, seed)

    def device_batch(self, host_batch: dict[str, np.ndarray]) -> dict:
        return self._parallel.host_batch_to_global(host_batch, self.experiment.mesh)

    def step(self, batch: dict) -> dict:
        """One update in place; returns the step's metrics (not waited on)."""
        with self._parallel.sharding_context(self.experiment.mesh, self._rules):
            self.state, metrics = self.jitted(self.state, batch)
        return metrics

    def run(self, batch: dict, steps: int) -> float:
        """Seconds for `steps` updates, blocking on the last state."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step(batch)
        self._jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def device_memory(self) -> dict | None:
        """The device allocator's statistics (peak_bytes_in_use, bytes_limit, ...) where the backend keeps them
        (GPU, TPU; None on CPU)."""
        stats = self._jax.devices()[0].memory_stats()
        return {key: int(value) for key, value in stats.items()} if stats else None


def world_batch(config, tokenizer, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`batch_size` embedded-world pairs (one caption each) at the config's image size, tokenised: the data the
    training pipeline feeds, without its threads competing with the step for the CPU. Beyond `MAX_DISTINCT_PAIRS`
    the pairs repeat (rendering thousands of 224-px images would take longer than the measurement)."""
    from ela_jax.data import world

    spec = world.WorldSpec(seed=config.data.seed, image_size=config.model.image.image_size)
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for index in range(min(batch_size, MAX_DISTINCT_PAIRS)):
        image, image_captions = world.generate_example(spec, "train", seed * batch_size + index)
        images.append(image)
        captions.append(image_captions[int(rng.integers(len(image_captions)))])
    token_ids, mask = tokenizer.encode(captions)
    pairs = {"images": np.stack(images), "token_ids": token_ids, "mask": mask}
    return {key: np.resize(value, (batch_size, *value.shape[1:])) for key, value in pairs.items()}


# --- FLOPs, counted analytically (multiply-add = 2 FLOPs)


def tower_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> int:
    """One transformer tower's forward FLOPs on one sequence: Q, K, V, O projections, scores and weighted sum,
    the MLP."""
    per_layer = tokens * (8 * width * width + 4 * width * mlp_dim) + 4 * tokens * tokens * width
    return depth * per_layer


def lexicon_head_flops(tokens: int, width: int, vocab: int) -> int:
    """dense width->width, then the decoder width->vocab, per sequence."""
    return tokens * (2 * width * width + 2 * width * vocab)


def forward_flops_per_pair(config) -> dict[str, int]:
    """Forward FLOPs of one image-text pair under the configured objective, by part (only what the step computes:
    the same `Needs` that decide which heads run). Norms, activations and the losses are left out (< 1%)."""
    from ela_jax.training.step import Needs

    model, needs, objective = config.model, Needs.from_config(config), config.objective
    image, text, vocab = model.image, model.text, model.vocab_size
    patches = (image.image_size // image.patch_size) ** 2
    length = config.tokenizer.max_length
    parts = {
        "image_tower": 2 * patches * image.patch_size**2 * 3 * image.width
        + tower_flops(patches + 1, image.width, image.depth, image.mlp_dim),
        "text_tower": tower_flops(length, text.width, text.depth, text.mlp_dim),
        "global_heads": 2 * model.embed_dim * (image.width + text.width) + 2 * config.batch_size * model.embed_dim,
    }
    if needs.image_lexicon:
        parts["image_lexicon_head"] = lexicon_head_flops(patches, image.width, vocab)
    if needs.text_lexicon:
        parts["text_lexicon_head"] = lexicon_head_flops(length, text.width, vocab)
    if needs.tokens:
        parts["token_heads"] = 2 * model.token_dim * (patches * image.width + length * text.width)
        parts["filip"] = 2 * config.batch_size * patches * length * model.token_dim
    if objective.mlm_weight > 0:
        parts["mlm_text_tower"] = parts["text_tower"]
        parts["mlm_head"] = lexicon_head_flops(length, text.width, vocab)
    return parts


def teacher_flops_per_pair(config) -> int:
    """Forward-only FLOPs of an EMA / frozen expansion teacher (text tower + text lexicon head), 0 without one."""
    from ela_jax.training.step import Needs

    if not (Needs.from_config(config).expansion and config.objective.ela.target_source in ("ema", "frozen")):
        return 0
    text, length = config.model.text, config.tokenizer.max_length
    return tower_flops(length, text.width, text.depth, text.mlp_dim) + lexicon_head_flops(
        length, text.width, config.model.vocab_size
    )


def train_flops_per_pair(config) -> int:
    """Forward x 3 (the backward pass costs about two forwards) plus a teacher's forward; rematerialisation is not
    counted (model FLOPs, as MFU is usually defined)."""
    return 3 * sum(forward_flops_per_pair(config).values()) + teacher_flops_per_pair(config)


# --- the device's matmul rate


def measured_matmul_rate(size: int, dtype: str = "float32", seconds: float = 2.0) -> float:
    """FLOP/s of a jitted [size, size] @ [size, size] jnp.dot on the default device: the median over repeats of up to
    20 products dispatched back to back, as a train step's matmuls run (waiting on each alone read an H100 at 609
    TFLOP/s where back-to-back products ran at about 730)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype) for k in keys)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()  # compiles
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    calls = int(min(20, max(1, 0.05 / (time.perf_counter() - start))))  # about 50 ms of work per repeat
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        jax.block_until_ready([dot(a, b) for _ in range(calls)])
        times.append((time.perf_counter() - start) / calls)
    return 2 * size**3 / statistics.median(times)


# --- machine facts and output


def machine() -> dict:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # no /proc/cpuinfo (not Linux) or no model name in it: keep platform's answer
    device = jax.devices()[0]
    return {
        "host_allocator": ela_jax.host_allocator.state(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "load_average_at_start": list(os.getloadavg()),
        "note": "shared machine: other jobs may have run meanwhile; compare the load averages at start and end",
    }


def run_on_one_core() -> int:
    """Confines this process, its threads and the children it starts to one CPU core (the lowest allowed) and tells
    both frameworks to start one compute thread. Call it before JAX or torch is imported. Thread flags alone are not
    enough: with XLA:CPU's Eigen pool off, a 1024^3 matmul still used both cores of this machine."""
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    os.environ["OMP_NUM_THREADS"] = "1"
    return core


def interleaved_medians(runners: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Runs each runner once per round, in rotating order, `repeats` rounds: background load hits every runner alike.
    Returns each runner's list of timings (seconds)."""
    names = list(runners)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            timings[name].append(runners[name]())
    return timings


def write_results(name: str, payload: dict, output: str | None = None) -> str:
    payload = {**payload}
    payload.setdefault("machine", {})["load_average_at_end"] = list(os.getloadavg())
    # Smoke runs check code paths; their numbers mean nothing, so they stay out of benchmarks/results.
    folder = tempfile.mkdtemp(prefix="ela_bench_smoke_") if name.endswith("_smoke") else RESULTS_DIR
    path = output or os.path.join(folder, f"{name}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path


def print_table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |")
