"""Hugging Face text (BERT, DistilBERT) and image (ViT, CLIP, SigLIP, DINOv2) checkpoints into ela_jax: `config.init.text_tower` / `image_tower` give the towers their
architecture (apply_hf_architecture) and starting weights (load_pretrained_towers); `load_exported` reads a
`to_pytorch` export back. Safetensors only: a pickled `.bin` checkpoint is refused, never unpickled.
"""

from __future__ import annotations

import json
import logging
import os

import ml_collections
import numpy as np
from safetensors import safe_open

from ela_jax.config import ConfigError
from ela_jax.convert import image_towers, keymap
from ela_jax.convert.position_resize import resize_positions
from ela_jax.models import layers
from ela_jax.models.ela import copy_text_lexicon_to_image
from ela_jax.objectives import needs_teacher

log = logging.getLogger(__name__)

SAFETENSORS_FILE, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLED_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def weight_files(directory: str, described_as: str) -> list[str]:
    """The safetensors file(s) of a Hugging Face model directory; ConfigError when there are none."""
    single = os.path.join(directory, SAFETENSORS_FILE)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(directory, shard) for shard in shards]
    pickled = [name for name in PICKLED_FILES if os.path.isfile(os.path.join(directory, name))]
    if pickled:
        raise ConfigError(
            f"{described_as} holds {pickled[0]} but no {SAFETENSORS_FILE}; pickled checkpoints can run "
            "code when loaded and are refused. Convert it once where you trust the file (load it with "
            "transformers, then save_pretrained writes model.safetensors)"
        )
    raise ConfigError(f"{described_as} holds no {SAFETENSORS_FILE}; point it at a Hugging Face model directory")


def read_weights(files: list[str]) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors `files` as numpy; bfloat16 ones as float32 (exact)."""
    weights = {}
    for path in files:
        with safe_open(path, framework="np") as f:
            names = list(f.keys())
            bfloat16 = [name for name in names if f.get_slice(name).get_dtype() == "BF16"]
            weights.update({name: f.get_tensor(name) for name in names if name not in bfloat16})
        if bfloat16:
            # numpy has no bfloat16; JAX's reader has.
            with safe_open(path, framework="flax") as f:
                weights.update({name: np.asarray(f.get_tensor(name), np.float32) for name in bfloat16})
    return weights


def read_json(path: str, described_as: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(
            f"{described_as} holds no {os.path.basename(path)}; point it at a Hugging Face model directory"
        )
    with open(path) as f:
        return json.load(f)


def _expect(hf_config: dict, key: str, expected, described_as: str, default=None) -> None:
    value = hf_config.get(key, default)
    if value != expected:
        raise ConfigError(f"{described_as} has {key}={value!r}; ela_jax can only load {key}={expected!r}")


def apply_hf_architecture(config: ml_collections.ConfigDict) -> None:
    """Sets config.model.text / config.model.image to the architecture in init.text_tower / init.image_tower's
    config.json, so the weights fit; raises ConfigError for a checkpoint that cannot be loaded into this config.

    Runs after validation and after model.vocab_size is resolved from the tokenizer, before the model is built."""
    if config.init.text_tower:
        _apply_bert_architecture(config, config.init.text_tower)
    if config.init.image_tower:
        _apply_vit_architecture(config, config.init.image_tower)


# Text tower checkpoints: model_type -> (model.text.hf_class, the prefix of the encoder in its MLM model).
TEXT_TOWER_TYPES = {"bert": ("BertForMaskedLM", "bert."), "distilbert": ("DistilBertForMaskedLM", "distilbert.")}
# DistilBertConfig's names for BertConfig's sizes.
DISTILBERT_KEYS = {
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "intermediate_size": "hidden_dim",
    "hidden_act": "activation",
}


def _text_settings(hf_config: dict, described_as: str) -> dict:
    """A BERT-architecture config.json (BERT, MiniLM, e5 / bge-style encoders, DistilBERT) in BertConfig's terms."""
    model_type = hf_config.get("model_type")
    if model_type not in TEXT_TOWER_TYPES:
        supported = ", ".join(f"{name} (model_type {key!r})" for key, (name, _) in TEXT_TOWER_TYPES.items())
        raise ConfigError(f"{described_as} has model_type={model_type!r}; init.text_tower supports {supported}")
    if model_type == "bert":
        return hf_config
    settings = {key: hf_config.get(distil_key) for key, distil_key in DISTILBERT_KEYS.items()}
    # DistilBERT's LayerNorms use 1e-12 and it has no token type embeddings.
    return {**hf_config, **settings, "layer_norm_eps": 1e-12, "type_vocab_size": 0}


def _apply_bert_architecture(config: ml_collections.ConfigDict, directory: str) -> None:
    described_as = f"init.text_tower={directory!r}"
    hf_config = read_json(os.path.join(directory, "config.json"), described_as)
    weight_files(directory, described_as)  # refuse a pickled-only checkpoint before anything compiles
    settings = _text_settings(hf_config, described_as)
    _expect(settings, "position_embedding_type", "absolute", described_as, default="absolute")
    if settings["vocab_size"] != config.model.vocab_size:
        raise ConfigError(
            f"{described_as} has vocab_size {settings['vocab_size']} but the tokenizer "
            f"(tokenizer.vocab={config.tokenizer.vocab!r}) has {config.model.vocab_size} words; set "
            "tokenizer.vocab to the checkpoint's vocab.txt"
        )
    if config.tokenizer.max_length > settings["max_position_embeddings"]:
        raise ConfigError(
            f"tokenizer.max_length {config.tokenizer.max_length} exceeds the "
            f"{settings['max_position_embeddings']} positions of {described_as}; lower "
            "tokenizer.max_length"
        )
    if config.model.lexicon.tie_text_decoder and not settings.get("tie_word_embeddings", True):
        raise ConfigError(
            f"{described_as} has an MLM decoder of its own (tie_word_embeddings false) but "
            "model.lexicon.tie_text_decoder is True; set model.lexicon.tie_text_decoder=False"
        )
    text = config.model.text
    copy_transformer_shape(text, settings, described_as)
    text.max_position_embeddings = settings["max_position_embeddings"]
    text.type_vocab_size = settings.get("type_vocab_size", 2)
    text.hf_class = TEXT_TOWER_TYPES[hf_config["model_type"]][0]


def copy_transformer_shape(tower: ml_collections.ConfigDict, hf_config: dict, described_as: str) -> None:
    """The transformer sizes of a Hugging Face BERT config.json (in BertConfig's key names)."""
    tower.width = hf_config["hidden_size"]
    tower.depth = hf_config["num_hidden_layers"]
    tower.num_heads = hf_config["num_attention_heads"]
    tower.mlp_dim = hf_config["intermediate_size"]
    tower.layer_norm_eps = float(hf_config.get("layer_norm_eps", 1e-12))
    act = image_towers.activation(hf_config.get("hidden_act", "gelu"), described_as)
    if act["quick_gelu"]:
        raise ConfigError(f"{described_as} uses hidden_act='quick_gelu'; ela_jax's text tower has exact or tanh GELU")
    tower.gelu_approximate = act["gelu_approximate"]


def _apply_vit_architecture(config: ml_collections.ConfigDict, directory: str) -> None:
    """model.image from the checkpoint's config.json; model.image.image_size becomes data.image_size (the position
    embeddings are resized on load when the checkpoint was trained at another resolution)."""
    described_as = f"init.image_tower={directory!r}"
    hf_config = read_json(os.path.join(directory, "config.json"), described_as)
    weight_files(directory, described_as)
    tower, settings = image_towers.tower_config(hf_config, described_as)
    image = config.model.image
    image.update(image_towers.architecture(tower, settings, described_as))
    if config.data.image_size % image.patch_size:
        raise ConfigError(
            f"data.image_size {config.data.image_size} is not a multiple of the patch size {image.patch_size} of "
            f"{described_as}; pick a multiple of {image.patch_size}"
        )
    image.image_size = config.data.image_size
    processor_path = os.path.join(directory, "preprocessor_config.json")
    if os.path.isfile(processor_path):
        processor = read_json(processor_path, described_as)
        rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
        if not np.isclose(rescale, 1 / 255, rtol=1e-6):
            raise ConfigError(
                f"{described_as} rescales pixels by {rescale}; ela_jax feeds uint8 images scaled by "
                "1/255, so this tower would see different inputs"
            )
        if processor.get("do_normalize", True) and "image_mean" in processor:
            image.pixel_mean = tuple(float(v) for v in processor["image_mean"])
            image.pixel_std = tuple(float(v) for v in processor["image_std"])


def tower_prefix(weights: dict, probe: str, prefixes: tuple[str, ...], described_as: str) -> str:
    """Which of `prefixes` ('' for a bare tower, then the wrappers of task or dual-encoder models) the checkpoint's
    keys carry, found by the key `probe`."""
    for prefix in prefixes:
        if prefix + probe in weights:
            return prefix
    raise ConfigError(
        f"{described_as} has no {' nor '.join(prefix + probe for prefix in prefixes)}; is it the right kind of "
        "checkpoint?"
    )


def wrapper_prefix(weights: dict, probe: str, wrapper: str, described_as: str) -> str:
    """'' for a bare BertModel / ViTModel checkpoint, `wrapper` ('bert.', 'vit.') for task models around one."""
    return tower_prefix(weights, probe, ("", wrapper), described_as)


def _mlm_head(settings: dict, text_config, encoder_prefix: str, tie_text_decoder: bool) -> keymap.KeyMap:
    def head(tied: bool) -> keymap.KeyMap:
        if text_config.hf_class == "DistilBertForMaskedLM":
            return keymap.distilbert_mlm_head(tied)
        return keymap.lexicon_head("text_lexicon", keymap.MLM_HEAD_PREFIX, tied=tied)

    if tie_text_decoder or not settings.get("tie_word_embeddings", True):
        return head(tie_text_decoder)
    # An untied decoder starts from the checkpoint's tied one: the word embeddings.
    tied_decoder = keymap.Rule(
        "text_lexicon/decoder_kernel", f"{encoder_prefix}embeddings.word_embeddings.weight", keymap.LINEAR, vocab_axis=1
    )
    return head(True) + keymap.KeyMap([tied_decoder])


def load_pretrained_towers(config: ml_collections.ConfigDict, params: dict) -> dict:
    """`params` (a host numpy tree) with the towers of init.text_tower / init.image_tower, and the text lexicon head
    when the BERT checkpoint has an MLM head (a BertModel checkpoint such as MiniLM leaves the head as it was)."""
    scanned = config.model.scan_layers  # the key map speaks the unrolled layer_{i} layout
    params = layers.unstack_layers(params) if scanned else params
    if config.init.text_tower:
        params = _load_bert(config, params, config.init.text_tower)
    if config.init.image_tower:
        params = _load_vit(config, params, config.init.image_tower)
    return layers.stack_layers(params) if scanned else params


def _load_bert(config: ml_collections.ConfigDict, params: dict, directory: str) -> dict:
    described_as = f"init.text_tower={directory!r}"
    hf_config = read_json(os.path.join(directory, "config.json"), described_as)
    settings = _text_settings(hf_config, described_as)
    weights = read_weights(weight_files(directory, described_as))
    wrapper = TEXT_TOWER_TYPES[hf_config["model_type"]][1]
    prefix = wrapper_prefix(weights, "embeddings.word_embeddings.weight", wrapper, described_as)
    text_config = config.model.text
    text_map = keymap.text_encoder(text_config, prefix)
    distil = text_config.hf_class == "DistilBertForMaskedLM"
    mlm_probe = "vocab_transform.weight" if distil else keymap.MLM_HEAD_PREFIX + "transform.dense.weight"
    has_mlm_head = mlm_probe in weights
    if not has_mlm_head and needs_teacher(config) and config.objective.ela.target_source == "frozen":
        # The frozen teacher copies the text lexicon head at step 0: without an MLM head in the checkpoint it is
        # random and stays random.
        raise ConfigError(
            f"objective.ela.target_source='frozen' copies the text lexicon head at step 0, but {described_as} has "
            "no MLM head to initialise it; use a *ForMaskedLM checkpoint, or target_source 'ema' or 'pretrained'"
        )
    if has_mlm_head:
        text_map += _mlm_head(settings, text_config, prefix, config.model.lexicon.tie_text_decoder)
    params = text_map.to_flax(weights, params, source=directory)
    if config.model.lexicon.init_image_from_text:
        # The copy made at initialisation holds the random text head (or random word embeddings); copy again.
        params = copy_text_lexicon_to_image(params, config.model.lexicon.tie_text_decoder)
    log.info("text tower%s initialised from %s", " and MLM (text lexicon) head" if has_mlm_head else "", directory)
    return params


POSITIONS = "image_tower/position_embeddings"


def _load_vit(config: ml_collections.ConfigDict, params: dict, directory: str) -> dict:
    described_as = f"init.image_tower={directory!r}"
    tower, _ = image_towers.tower_config(read_json(os.path.join(directory, "config.json"), described_as), described_as)
    weights = read_weights(weight_files(directory, described_as))
    prefix = tower_prefix(weights, tower.probe, tower.prefixes, described_as)
    image = config.model.image
    image_map = keymap.image_encoder(image, prefix)
    (positions_key,) = [rule.torch_key for rule in image_map.rules if rule.flax_path == POSITIONS]
    if positions_key in weights:
        positions, wanted = weights[positions_key], params["image_tower"]["position_embeddings"].shape[1]
        if positions.shape[-2] != wanted:
            # As the tower's own interpolate_pos_encoding does at every call, once here.
            prefix_tokens = 1 if image.class_token else 0
            grid = int(round(np.sqrt(wanted - prefix_tokens)))
            weights = {**weights, positions_key: resize_positions(positions, grid, prefix_tokens, tower.antialias)}
            log.warning(
                "position embeddings of %s resized from %d to %d patches for %dpx images",
                directory,
                positions.shape[-2] - prefix_tokens,
                grid * grid,
                image.image_size,
            )
    params = image_map.to_flax(weights, params, source=directory)
    log.warning("image tower (%s) initialised from %s", tower.name, directory)
    return params


def load_exported(directory: str, model_config: ml_collections.ConfigDict, params) -> dict:
    """The params of a `to_pytorch` export (e.g. after fine-tuning in PyTorch), in the shapes and dtypes of `params`
    (arrays or jax.ShapeDtypeStructs of the ELAModel that `model_config` builds); every leaf comes from the files."""
    ela_config = read_json(os.path.join(directory, "ela_config.json"), f"export {directory!r}")
    if ela_config["tie_text_decoder"] != model_config.lexicon.tie_text_decoder:
        raise ValueError(
            f"{directory} was exported with tie_text_decoder={ela_config['tie_text_decoder']}; build "
            "the model with the same model.lexicon.tie_text_decoder"
        )
    params = layers.unstack_layers(params) if model_config.scan_layers else params
    layout = keymap.export_layout(model_config)
    uncovered = keymap.uncovered_paths(params, layout.values())
    if uncovered:
        raise ValueError(f"parameters {uncovered[:5]} have no rule in ela_jax/convert/keymap.py; add rules for them")
    for name, key_map in layout.items():
        path = os.path.join(directory, ela_config[name])
        files = weight_files(path, f"export {path!r}") if os.path.isdir(path) else [path]
        params = key_map.to_flax(read_weights(files), params, source=path)
    return layers.stack_layers(params) if model_config.scan_layers else params
