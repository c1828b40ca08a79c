"""Config validation that runs before anything compiles: `validate` turns a config that cannot run into one
actionable line (ConfigError). Each data source checks its own section (ela_jax.data.sources)."""

from __future__ import annotations

import math
import os
import re

import ml_collections

from ela_jax import config as config_lib
from ela_jax.data import sources
from ela_jax.errors import ConfigError, check_choice

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _validate_lexicon(lexicon_config) -> None:
    if lexicon_config.chunk < 0:
        raise ConfigError(f"model.lexicon.chunk must be >= 0 (0 = dense), got {lexicon_config.chunk}")
    check_choice(lexicon_config.impl, config_lib.LEXICON_IMPLS, "model.lexicon.impl")


def _validate_eval(eval_config) -> None:
    hybrid_weights = eval_config.hybrid_weights.to_dict()
    if any(w < 0 for w in hybrid_weights.values()) or not any(w > 0 for w in hybrid_weights.values()):
        raise ConfigError(f"eval.hybrid_weights must be >= 0 with at least one > 0, got {hybrid_weights}")
    check_choice(eval_config.hybrid_normalise, ("std", "none"), "eval.hybrid_normalise")
    check_choice(eval_config.retriever, config_lib.RETRIEVERS, "eval.retriever")
    seismic = eval_config.seismic
    for key in ("centroid_fraction", "summary_energy", "heap_factor"):
        if not 0.0 < seismic[key] <= 1.0:
            raise ConfigError(f"eval.seismic.{key} must lie in (0, 1], got {seismic[key]}")
    for key in ("n_postings", "query_cut", "num_threads"):
        if seismic[key] < 1:
            raise ConfigError(f"eval.seismic.{key} must be >= 1, got {seismic[key]}")
    zeroshot = eval_config.zeroshot
    if zeroshot.dataset not in ("world_colour", "world_shape") and not zeroshot.dataset.startswith("tfds:"):
        raise ConfigError(
            f"eval.zeroshot.dataset={zeroshot.dataset!r} is not 'world_colour', 'world_shape' or 'tfds:NAME'"
        )
    for score in zeroshot.scores:
        check_choice(score, config_lib.SCORES, "eval.zeroshot.scores")
    for template in zeroshot.templates:
        if template.count("{}") != 1:
            raise ConfigError(f"eval.zeroshot.templates entry {template!r} must contain exactly one '{{}}'")
    if zeroshot.num_examples < 0:
        raise ConfigError(f"eval.zeroshot.num_examples must be >= 0 (0: all), got {zeroshot.num_examples}")


def _validate_evals(config: ml_collections.ConfigDict) -> None:
    for name, entry in config.evals.items():
        check_choice(entry.type, config_lib.EVALUATOR_TYPES, f"evals.{name}.type")
    retrieval_in_training = any(e.type == "retrieval" and e.during_training for e in config.evals.values())
    if config.checkpoint.best_metric and not retrieval_in_training:
        raise ConfigError(
            f"checkpoint.best_metric={config.checkpoint.best_metric!r} ranks checkpoints by retrieval, but no evals "
            "entry of type 'retrieval' runs during training; set evals.retrieval.during_training=True"
        )


def _validate_checkpointing(config: ml_collections.ConfigDict) -> None:
    checkpoint = config.checkpoint
    if checkpoint.keep < 1 or checkpoint.keep_best < 1:
        raise ConfigError(
            f"checkpoint.keep and checkpoint.keep_best must be >= 1, got {checkpoint.keep}, {checkpoint.keep_best}"
        )
    check_choice(checkpoint.best_mode, ("max", "min"), "checkpoint.best_mode")
    if checkpoint.best_metric:
        score, _, metric = checkpoint.best_metric.partition("/")
        if score not in config.eval.scores or not metric:
            raise ConfigError(
                f"checkpoint.best_metric={checkpoint.best_metric!r} must be 'SCORE/METRIC' with SCORE in eval.scores "
                f"{list(config.eval.scores)}, e.g. 'global/rsum'"
            )
    if config.resume and not os.path.exists(config.resume):
        raise ConfigError(f"config.resume={config.resume!r} does not exist; give a training workdir or checkpoint")


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
    if ela.target_source == "frozen" and not (config.init.text_tower or config.init.workdir):
        raise ConfigError(
            f"{source}, a copy of the text side at step 0, but init.text_tower is empty so that copy is random; set "
            "init.text_tower to a BERT checkpoint with an MLM head (or init.workdir to a run), or use target_source 'ema' or 'pretrained'"
        )
    if ela.target_source == "pretrained" and not ela.teacher_dir:
        raise ConfigError(
            f"{source}, which needs objective.ela.teacher_dir, a Hugging Face BERT folder "
            "(configs/ela_minilm.minilm_dir() is the offline MiniLM)"
        )


def _validate_image_switches(image) -> None:
    """The ViT switches (config.image_tower_switches) must leave a summary token first in the tower's output."""
    check_choice(image.hf_class, config_lib.IMAGE_TOWER_CLASSES, "model.image.hf_class")
    check_choice(image.final_norm, config_lib.FINAL_NORMS, "model.image.final_norm")
    if not (image.class_token or image.attention_pool):
        raise ConfigError(
            "model.image.class_token=False needs model.image.attention_pool=True: the heads read the tower's first "
            "token as its summary, and without either it would be a patch"
        )
    if (image.register_tokens or image.final_norm == "class_token") and not image.class_token:
        raise ConfigError(
            f"model.image.register_tokens={image.register_tokens} / final_norm={image.final_norm!r} need "
            "model.image.class_token=True (they are placed and normalised relative to it)"
        )


def _require(condition: bool, key: str, value, wanted: str) -> None:
    if not condition:
        raise ConfigError(f"{key} must be {wanted}, got {value!r}")


def _validate_sizes(config: ml_collections.ConfigDict) -> None:
    """Every size is positive (a zero one fails far from its key, as a division by zero or a reshape)."""
    model = config.model
    sizes = {"batch_size": config.batch_size, "eval.batch_size": config.eval.batch_size}
    for tower in ("image", "text"):
        for name in ("width", "depth", "num_heads", "mlp_dim"):
            sizes[f"model.{tower}.{name}"] = model[tower][name]
    sizes.update(
        {
            "model.image.image_size": model.image.image_size,
            "model.image.patch_size": model.image.patch_size,
            "model.embed_dim": model.embed_dim,
            "model.token_dim": model.token_dim,
            "data.image_size": config.data.image_size,
            "data.num_train": config.data.num_train,
            "data.num_test": config.data.num_test,
            "data.captions_per_image": config.data.captions_per_image,
        }
    )
    for key, value in sizes.items():
        _require(isinstance(value, int) and value > 0, key, value, "a positive integer")
    # [CLS] and [SEP] take two positions; a caption needs at least one more.
    _require(config.tokenizer.max_length >= 3, "tokenizer.max_length", config.tokenizer.max_length, ">= 3")


def _validate_optimizer(optim) -> None:
    _require(math.isfinite(optim.lr) and optim.lr > 0, "optim.lr", optim.lr, "a finite number > 0")
    _require(optim.warmup_steps >= 0, "optim.warmup_steps", optim.warmup_steps, ">= 0")
    _require(0.0 <= optim.end_lr_fraction <= 1.0, "optim.end_lr_fraction", optim.end_lr_fraction, "in [0, 1]")
    _require(
        math.isfinite(optim.weight_decay) and optim.weight_decay >= 0,
        "optim.weight_decay",
        optim.weight_decay,
        "a finite number >= 0",
    )
    for name in ("b1", "b2"):
        _require(0.0 <= optim[name] < 1.0, f"optim.{name}", optim[name], "in [0, 1)")
    # eps > 0 keeps Adam's update finite where a gradient entry and its second moment are both zero.
    _require(math.isfinite(optim.eps) and optim.eps > 0, "optim.eps", optim.eps, "a finite number > 0 (e.g. 1e-6)")
    _require(math.isfinite(optim.clip_norm) and optim.clip_norm > 0, "optim.clip_norm", optim.clip_norm, "> 0")


def _validate_parameter_groups(optim) -> None:
    """optim.frozen: regular expressions; optim.lr_multipliers: (regular expression, multiplier > 0) pairs."""
    patterns = list(optim.frozen)
    for entry in optim.lr_multipliers:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], (int, float))):
            raise ConfigError(
                f"optim.lr_multipliers entries must be (pattern, multiplier) pairs, got {entry!r}; e.g. "
                "(('image_tower/.*', 0.1),)"
            )
        _require(
            math.isfinite(entry[1]) and entry[1] > 0,
            f"optim.lr_multipliers[{entry[0]!r}]",
            entry[1],
            "a finite number > 0 (freeze with optim.frozen instead of 0)",
        )
        patterns.append(entry[0])
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ConfigError(f"optim pattern {pattern!r} is not a regular expression ({error}); e.g. 'image_tower/.*'")


def _validate_init_workdir(config: ml_collections.ConfigDict) -> None:
    """init.workdir replaces every initial weight, so it cannot be combined with the other starting points."""
    if not config.init.workdir:
        return
    others = {"resume": config.resume, "init.text_tower": config.init.text_tower}
    others["init.image_tower"] = config.init.image_tower
    for key, value in others.items():
        if value:
            raise ConfigError(
                f"init.workdir={config.init.workdir!r} and {key}={value!r} both set the starting weights; keep one"
            )


def _validate_sigmoid_start(config: ml_collections.ConfigDict) -> None:
    """The sigmoid loss's starting scale is a logit scale like the others: positive and under the clamp."""
    if config.objective.global_loss != "sigmoid":
        return
    sigmoid, largest = config.model.sigmoid, 1.0 / config.model.min_temperature
    _require(
        math.isfinite(sigmoid.init_scale) and 0 < sigmoid.init_scale <= largest,
        "model.sigmoid.init_scale",
        sigmoid.init_scale,
        f"in (0, {largest:g}] (1 / model.min_temperature)",
    )
    _require(math.isfinite(sigmoid.init_bias), "model.sigmoid.init_bias", sigmoid.init_bias, "finite")


def _validate_temperatures(config: ml_collections.ConfigDict) -> None:
    """Temperatures divide logits: zero or negative ones give infinities at the first step."""
    model, ela = config.model, config.objective.ela
    temperatures = {
        "model.init_temperature": model.init_temperature,
        "model.min_temperature": model.min_temperature,
        "objective.ela.tau_p": ela.tau_p,
        "objective.ela.tau_q": ela.tau_q,
        "objective.ela.tau_contrastive": ela.tau_contrastive,
        "objective.lexicon_tau": config.objective.lexicon_tau,
    }
    for key, value in temperatures.items():
        _require(math.isfinite(value) and value > 0, key, value, "a finite number > 0")
    if model.min_temperature > model.init_temperature:
        raise ConfigError(
            f"model.min_temperature {model.min_temperature} exceeds model.init_temperature {model.init_temperature}"
        )
    _require(0.0 <= ela.ema_decay <= 1.0, "objective.ela.ema_decay", ela.ema_decay, "in [0, 1]")
    _require(ela.top_k >= 0, "objective.ela.top_k", ela.top_k, ">= 0 (0 keeps all)")
    _require(ela.source_top_k >= 0, "objective.ela.source_top_k", ela.source_top_k, ">= 0 (0 keeps all)")
    _require(ela.presence_weight >= 0, "objective.ela.presence_weight", ela.presence_weight, ">= 0")
    _require(0.0 < ela.bce_threshold < 1.0, "objective.ela.bce_threshold", ela.bce_threshold, "in (0, 1)")
    probability = config.objective.mlm_probability
    _require(0.0 < probability <= 1.0, "objective.mlm_probability", probability, "in (0, 1]")


def _validate_tokenizer(tokenizer_config) -> None:
    """A vocab.txt file must be a BERT WordPiece vocabulary: one token a line, with BERT's special tokens."""
    vocab = tokenizer_config.vocab
    if vocab in ("world", "bert-base-uncased"):
        return
    if not os.path.isfile(vocab):
        raise ConfigError(
            f"tokenizer.vocab file {vocab!r} does not exist; give a vocab.txt path, 'world' or 'bert-base-uncased'"
        )
    with open(vocab, encoding="utf-8", errors="replace") as f:
        tokens = {line.strip() for line in f}
    missing = [token for token in BERT_SPECIAL_TOKENS if token not in tokens]
    if missing:
        raise ConfigError(
            f"tokenizer.vocab file {vocab!r} is not a BERT vocabulary: it lacks {', '.join(missing)}; give a "
            "vocab.txt (one token a line, with [PAD] [UNK] [CLS] [SEP] [MASK]), 'world' or 'bert-base-uncased'"
        )


def _logical_split(config: ml_collections.ConfigDict, logical: str, mesh_shape) -> tuple[int, str]:
    """(devices, 'mesh.a x mesh.b') that the logical axis `logical` is split over by config.mesh.rules."""
    sizes = dict(zip(("data", "fsdp", "tensor"), mesh_shape))
    axes = next((mesh_axes for name, mesh_axes in config.mesh.rules if name == logical), None)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(sizes[axis] for axis in axes), " x ".join(f"mesh.{axis}" for axis in axes)


def _validate_mesh_divisibility(config: ml_collections.ConfigDict, mesh_shape) -> None:
    """Every dimension the mesh splits divides evenly (else JAX fails late, with an IndivisibleError). The vocabulary
    is checked once the tokenizer has given its size (experiment.check_vocab_sharding)."""
    batch_parallel = mesh_shape[0] * mesh_shape[1]
    if config.batch_size % batch_parallel or config.batch_size % (config.train.microbatches * batch_parallel):
        raise ConfigError(
            f"batch_size {config.batch_size} must split into train.microbatches={config.train.microbatches} "
            f"micro-batches, each divisible by the {batch_parallel} data-parallel devices (mesh.data x mesh.fsdp); "
            f"use a multiple of {config.train.microbatches * batch_parallel}"
        )
    for tower in ("image", "text"):
        for name, logical in (("num_heads", "heads"), ("mlp_dim", "mlp")):
            value = config.model[tower][name]
            devices, axes = _logical_split(config, logical, mesh_shape)
            if value % devices:
                raise ConfigError(
                    f"model.{tower}.{name}={value} does not split over the {devices} devices of {axes}; use a multiple "
                    f"of {devices} (keeping model.{tower}.width divisible by num_heads) or a smaller {axes}"
                )


def _validate_text_stream(config: ml_collections.ConfigDict, mesh_shape, num_processes: int) -> None:
    """The cue world's unpaired text stream: only that world writes it, and it splits like the batch does."""
    rows = config.data.text_stream.batch_size
    if config.objective.stream_mlm_weight < 0 or rows < 0:
        raise ConfigError(
            f"objective.stream_mlm_weight and data.text_stream.batch_size must be >= 0, got "
            f"{config.objective.stream_mlm_weight} and {rows}"
        )
    if config.objective.stream_mlm_weight > 0 and rows <= 0:
        raise ConfigError(
            f"objective.stream_mlm_weight={config.objective.stream_mlm_weight} trains on the text stream, but "
            "data.text_stream.batch_size is 0; set it > 0 (with data.world='cues') or the weight to 0"
        )
    if rows <= 0:
        return
    if config.data.name != "world" or config.data.world != "cues":
        raise ConfigError(
            f"data.text_stream.batch_size={rows} needs the cue world's sentences (data.name='world', "
            f"data.world='cues'), got data.name={config.data.name!r}, data.world={config.data.world!r}; set it to 0"
        )
    split = math.lcm(mesh_shape[0] * mesh_shape[1] * config.train.microbatches, num_processes)
    if rows % split:
        raise ConfigError(
            f"data.text_stream.batch_size {rows} must split into train.microbatches micro-batches over the "
            f"data-parallel devices and the processes; use a multiple of {split}"
        )


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
    """Raises ConfigError naming the key and what to do; cheap, and run before any compilation."""
    mesh_shape = config_lib.resolve_mesh_shape(config.mesh, num_devices)
    _validate_sizes(config)
    _validate_optimizer(config.optim)
    _validate_parameter_groups(config.optim)
    _validate_init_workdir(config)
    _validate_temperatures(config)
    _validate_tokenizer(config.tokenizer)
    if config.train.microbatches < 1:
        raise ConfigError(f"train.microbatches must be >= 1, got {config.train.microbatches}")
    _validate_mesh_divisibility(config, mesh_shape)
    _validate_text_stream(config, mesh_shape, num_processes)
    if config.batch_size % num_processes:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {num_processes} processes")
    if config.total_steps <= 0:
        raise ConfigError(f"total_steps must be positive, got {config.total_steps}")
    check_choice(config.model.dtype, config_lib.DTYPES, "model.dtype")
    check_choice(config.model.global_pool, ("cls", "mean"), "model.global_pool")
    check_choice(config.model.remat_policy, ("full", "dots", "dots_no_batch"), "model.remat_policy")
    splits = config.model.attention_batch_splits
    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ConfigError(f"model.attention_batch_splits must be a positive integer, got {splits!r}")
    objective = config.objective
    check_choice(objective.global_loss, config_lib.GLOBAL_LOSSES, "objective.global_loss")
    _validate_sigmoid_start(config)
    check_choice(objective.ela.loss, config_lib.ELA_LOSSES, "objective.ela.loss")
    check_choice(objective.ela.target_source, config_lib.TARGET_SOURCES, "objective.ela.target_source")
    check_choice(objective.ela.pool, config_lib.PATCH_POOLS, "objective.ela.pool")
    check_choice(objective.ela.target_form, config_lib.TARGET_FORMS, "objective.ela.target_form")
    for score in config.eval.scores:
        check_choice(score, config_lib.SCORES, "eval.scores")
    check_choice(config.eval.lexicon_similarity, ("cosine", "dot"), "eval.lexicon_similarity")
    _validate_eval(config.eval)
    _validate_evals(config)
    weight_keys = ("global_weight", "fine_weight", "ela_weight", "lexicon_weight", "flops_weight", "mlm_weight")
    weights = {k: objective[k] for k in weight_keys}
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ConfigError(f"objective weights must be >= 0 with at least one > 0, got {weights}")
    if not 0.0 <= objective.ela.beta <= 1.0:
        raise ConfigError(f"objective.ela.beta must lie in [0, 1], got {objective.ela.beta}")
    _validate_expansion_source(config)
    sources.validate_section(config.data)
    image = config.model.image
    _validate_image_switches(image)
    check_choice(config.model.text.hf_class, config_lib.TEXT_TOWER_CLASSES, "model.text.hf_class")
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
    for tower in ("text_tower", "image_tower"):
        path = config.init[tower]
        if path and not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"init.{tower}={path!r} holds no config.json; point it at a Hugging Face model directory")
    for key in (
        "checkpoint.every_steps",
        "log.every_steps",
        "eval.every_steps",
        "log.profile_steps",
        "log.profile_start_step",
    ):
        section, name = key.split(".")
        if config[section][name] < 0:
            raise ConfigError(f"{key} must be >= 0, got {config[section][name]}")
    if config.model.vocab_multiple < 1:
        raise ConfigError(f"model.vocab_multiple must be >= 1, got {config.model.vocab_multiple}")
    _validate_lexicon(config.model.lexicon)
    _validate_checkpointing(config)
    if config.train.bucket_request_tries < 1:
        raise ConfigError(f"train.bucket_request_tries must be >= 1, got {config.train.bucket_request_tries}")
    if config.train.max_bad_steps < 1:
        raise ConfigError(f"train.max_bad_steps must be >= 1, got {config.train.max_bad_steps}")
    if config.log.every_steps == 0:
        raise ConfigError("log.every_steps must be positive")
