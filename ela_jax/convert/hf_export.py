"""Export a trained ELA model to PyTorch: `O/text` (model.text.hf_class, e.g. BertForMaskedLM, + tokenizer),
`O/image` (model.image.hf_class, e.g. ViTModel, + image processor), `O/ela_heads.safetensors` and
`O/ela_config.json` for `ela_jax.torch_model.ELATorch`.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_collections
import numpy as np
import transformers
from safetensors.numpy import save_file

from ela_jax.convert import image_towers, keymap
from ela_jax.data.tokenizer import Tokenizer
from ela_jax.models import layers

TEXT_DIR, IMAGE_DIR, HEADS_FILE, ELA_CONFIG_FILE = "text", "image", "ela_heads.safetensors", "ela_config.json"
WEIGHTS_FILE = "model.safetensors"


def hidden_act(gelu_approximate: bool) -> str:
    """transformers' name of the GELU the tower uses: "gelu" is the exact erf form, the other the tanh one."""
    return "gelu_pytorch_tanh" if gelu_approximate else "gelu"


def bert_config(model_config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> transformers.BertConfig:
    text = model_config.text
    return transformers.BertConfig(
        architectures=["BertForMaskedLM"],
        vocab_size=model_config.vocab_size,
        hidden_size=text.width,
        num_hidden_layers=text.depth,
        num_attention_heads=text.num_heads,
        intermediate_size=text.mlp_dim,
        hidden_act=hidden_act(text.gelu_approximate),
        # ela_jax trains without dropout; transformers' 0.1 default would change fine-tuning in PyTorch.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=text.max_position_embeddings,
        type_vocab_size=text.type_vocab_size,
        layer_norm_eps=text.layer_norm_eps,
        pad_token_id=tokenizer.pad_id,
        tie_word_embeddings=model_config.lexicon.tie_text_decoder,
    )


def distilbert_config(model_config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> transformers.DistilBertConfig:
    text = model_config.text
    return transformers.DistilBertConfig(
        architectures=["DistilBertForMaskedLM"],
        vocab_size=model_config.vocab_size,
        dim=text.width,
        n_layers=text.depth,
        n_heads=text.num_heads,
        hidden_dim=text.mlp_dim,
        activation=hidden_act(text.gelu_approximate),
        dropout=0.0,
        attention_dropout=0.0,
        max_position_embeddings=text.max_position_embeddings,
        pad_token_id=tokenizer.pad_id,
        tie_word_embeddings=model_config.lexicon.tie_text_decoder,
    )


def text_config(model_config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> transformers.PretrainedConfig:
    """The transformers config of model.text.hf_class; refuses a tower whose switches that class cannot express."""
    text = model_config.text
    if text.hf_class == "DistilBertForMaskedLM":
        if text.type_vocab_size or text.layer_norm_eps != 1e-12:
            raise ValueError(
                f"model.text (type_vocab_size {text.type_vocab_size}, layer_norm_eps {text.layer_norm_eps}) is not a "
                "DistilBERT (0 and 1e-12); export it as model.text.hf_class='BertForMaskedLM'"
            )
        return distilbert_config(model_config, tokenizer)
    if not text.type_vocab_size:
        raise ValueError(
            "model.text.type_vocab_size is 0, which BertForMaskedLM cannot hold; use DistilBertForMaskedLM"
        )
    return bert_config(model_config, tokenizer)


def image_activation(image_config: ml_collections.ConfigDict) -> str:
    return "quick_gelu" if image_config.quick_gelu else hidden_act(image_config.gelu_approximate)


def image_config(model_config: ml_collections.ConfigDict) -> transformers.PretrainedConfig:
    """The transformers config of model.image.hf_class, at the resolution ela_jax trained at; refuses a tower whose
    switches differ from that class's architecture (it would load, and compute something else)."""
    image = model_config.image
    tower = image_towers.BY_CLASS[image.hf_class]
    switches = {key: image[key] for key in tower.switches}
    if switches != tower.switches:
        raise ValueError(
            f"model.image has switches {switches}, but {image.hf_class} is {tower.switches}; set model.image.hf_class "
            "to the class the tower was built as"
        )
    if image.hf_class == "ViTModel":
        return vit_config(model_config)
    sizes = dict(
        architectures=[image.hf_class],
        hidden_size=image.width,
        num_hidden_layers=image.depth,
        num_attention_heads=image.num_heads,
        hidden_act=image_activation(image),
        layer_norm_eps=image.layer_norm_eps,
        image_size=image.image_size,
        patch_size=image.patch_size,
        num_channels=3,
    )
    if image.hf_class == "CLIPVisionModel":
        return transformers.CLIPVisionConfig(intermediate_size=image.mlp_dim, attention_dropout=0.0, **sizes)
    if image.hf_class == "SiglipVisionModel":
        return transformers.SiglipVisionConfig(
            intermediate_size=image.mlp_dim, attention_dropout=0.0, vision_use_head=True, **sizes
        )
    if image.mlp_dim % image.width:
        raise ValueError(
            f"model.image.mlp_dim {image.mlp_dim} is not a multiple of width {image.width}, which {image.hf_class} "
            "(an integer mlp_ratio) cannot hold"
        )
    dinov2 = dict(
        mlp_ratio=image.mlp_dim // image.width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        qkv_bias=True,
        use_swiglu_ffn=False,
        **sizes,
    )
    if image.hf_class == "Dinov2Model":
        return transformers.Dinov2Config(**dinov2)
    return transformers.Dinov2WithRegistersConfig(num_register_tokens=image.register_tokens, **dinov2)


def image_state_dict(model_config: ml_collections.ConfigDict, key_map: keymap.KeyMap, params) -> dict:
    state_dict = key_map.to_torch(params, model_config.vocab_size)
    if model_config.image.hf_class.startswith("Dinov2"):
        # Used only by masked pre-training; ela_jax has none to train. Zeros, as transformers initialises it.
        state_dict["embeddings.mask_token"] = np.zeros((1, model_config.image.width), np.float32)
    return state_dict


def vit_config(model_config: ml_collections.ConfigDict) -> transformers.ViTConfig:
    image = model_config.image
    return transformers.ViTConfig(
        architectures=["ViTModel"],
        hidden_size=image.width,
        num_hidden_layers=image.depth,
        num_attention_heads=image.num_heads,
        intermediate_size=image.mlp_dim,
        hidden_act=image_activation(image),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=image.layer_norm_eps,
        image_size=image.image_size,
        patch_size=image.patch_size,
        num_channels=3,
        qkv_bias=True,
    )


def image_processor_config(image_config: ml_collections.ConfigDict) -> dict:
    """ViTImageProcessor settings that give the pixels the JAX model sees: the evaluation geometry
    (ela_jax.data.images.centre_crop: shorter side resized, centre crop, no squashing), then x / 255 and mean/std."""
    size = image_config.image_size
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 2,  # PIL bilinear; images already at image_size pass through unchanged
        "do_center_crop": True,
        "do_convert_rgb": True,  # palette, greyscale, CMYK to RGB; alpha on white, as ela_jax.data.images.to_rgb
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(image_config.pixel_mean),
        "image_std": list(image_config.pixel_std),
    }


def write_tokenizer(tokenizer: Tokenizer, lowercase: bool, directory: str) -> None:
    """vocab.txt (read by every BERT tokenizer) plus tokenizer.json / tokenizer_config.json with max length and
    lowercasing, so `BertTokenizerFast.from_pretrained(directory)` splits text exactly as ela_jax does."""
    vocab_path = os.path.join(directory, "vocab.txt")
    shutil.copyfile(tokenizer.vocab_file, vocab_path)
    with open(vocab_path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): index for index, line in enumerate(f)}
    hf_tokenizer = transformers.BertTokenizerFast(
        vocab=vocab, do_lower_case=lowercase, model_max_length=tokenizer.max_length
    )
    hf_tokenizer.save_pretrained(directory)


def save_weights(state_dict: dict[str, np.ndarray], path: str) -> None:
    # transformers refuses safetensors files whose metadata does not name the framework.
    save_file(state_dict, path, metadata={"format": "pt"})


def export(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, params, output_dir: str, source: dict | None = None
) -> None:
    """Writes `params` (host numpy tree of an ELAModel built from `config`) as the PyTorch layout into output_dir.

    `source` (e.g. workdir and step) is recorded in ela_config.json for provenance."""
    model_config = config.model
    if model_config.scan_layers:  # the key map speaks the unrolled layer_{i} layout
        params = layers.unstack_layers(params)
    layout = keymap.export_layout(model_config)
    uncovered = keymap.uncovered_paths(params, layout.values())
    if uncovered:
        raise ValueError(
            f"parameters {uncovered[:5]} have no rule in ela_jax/convert/keymap.py and would be lost in "
            "PyTorch; add rules for them"
        )

    text_dir, image_dir = os.path.join(output_dir, TEXT_DIR), os.path.join(output_dir, IMAGE_DIR)
    os.makedirs(text_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    text_config(model_config, tokenizer).save_pretrained(text_dir)
    save_weights(layout["text"].to_torch(params, model_config.vocab_size), os.path.join(text_dir, WEIGHTS_FILE))
    write_tokenizer(tokenizer, config.tokenizer.lowercase, text_dir)

    image_config(model_config).save_pretrained(image_dir)
    save_weights(image_state_dict(model_config, layout["image"], params), os.path.join(image_dir, WEIGHTS_FILE))
    with open(os.path.join(image_dir, "preprocessor_config.json"), "w") as f:
        json.dump(image_processor_config(model_config.image), f, indent=2)

    save_weights(layout["heads"].to_torch(params, model_config.vocab_size), os.path.join(output_dir, HEADS_FILE))
    ela_config = {
        "text": TEXT_DIR,
        "image": IMAGE_DIR,
        "text_class": model_config.text.hf_class,
        "image_class": model_config.image.hf_class,
        "heads": HEADS_FILE,
        "max_length": tokenizer.max_length,
        "image_size": model_config.image.image_size,
        "pixel_mean": list(model_config.image.pixel_mean),
        "pixel_std": list(model_config.image.pixel_std),
        "vocab_size": model_config.vocab_size,
        "embed_dim": model_config.embed_dim,
        "token_dim": model_config.token_dim,
        "global_pool": model_config.global_pool,  # "cls" or "mean" over real tokens
        "tie_text_decoder": model_config.lexicon.tie_text_decoder,
        # The image lexicon head has the image tower's activation and LayerNorm epsilon (as in ELAModel).
        "image_lexicon": {
            "hidden_act": hidden_act(model_config.image.gelu_approximate),
            "layer_norm_eps": model_config.image.layer_norm_eps,
        },
        "min_temperature": model_config.min_temperature,  # logit scales are clipped at 1 / min_temperature
        "special_ids": list(tokenizer.special_ids),  # words no lexicon vector holds
        "source": source or {},
    }
    with open(os.path.join(output_dir, ELA_CONFIG_FILE), "w") as f:
        json.dump(ela_config, f, indent=1)
