"""The Hugging Face image tower classes init.image_tower reads (and to_pytorch writes back): which class a
config.json describes, the model.image architecture and switches it means, and where its weights sit in the file.

Reads JSON only (no transformers import): a training worker needs no PyTorch stack to start from a checkpoint.
"""

from __future__ import annotations

import dataclasses

from ela_jax.config import ConfigError

# transformers' hidden_act -> ela_jax's gelu_approximate (the tanh form); quick_gelu is a switch of its own.
GELU_APPROXIMATE = {"gelu": False, "gelu_python": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
QUICK_GELU = "quick_gelu"


@dataclasses.dataclass(frozen=True)
class TowerClass:
    name: str  # the transformers class, as model.image.hf_class
    # model.image switches (config.image_tower_switches) that fix the class's structure; register_tokens and
    # quick_gelu come from the config.json's settings.
    switches: dict
    defaults: dict  # transformers' config defaults, for keys a config.json may leave out
    # Prefixes of the tower's keys in a file: bare, then task or dual-encoder models around it.
    prefixes: tuple[str, ...]
    probe: str  # a key every checkpoint of the class holds, to find the prefix
    antialias: bool  # whether its interpolate_pos_encoding resizes with antialias=True


_VIT_SWITCHES = dict(
    class_token=True,
    patch_bias=True,
    embedding_norm=False,
    layer_scale=False,
    final_norm="all",
    attention_pool=False,
)
_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224)
_DINOV2_DEFAULTS = dict(_DEFAULTS, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, mlp_ratio=4.0)

TOWER_CLASSES = {
    "vit": TowerClass(
        "ViTModel",
        _VIT_SWITCHES,
        dict(_DEFAULTS, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-12),
        ("", "vit."),
        "embeddings.cls_token",
        antialias=False,
    ),
    "clip_vision_model": TowerClass(
        "CLIPVisionModel",
        dict(_VIT_SWITCHES, patch_bias=False, embedding_norm=True, final_norm="class_token"),
        dict(_DEFAULTS, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        ("", "vision_model."),
        "embeddings.class_embedding",
        antialias=False,
    ),
    "siglip_vision_model": TowerClass(
        "SiglipVisionModel",
        dict(_VIT_SWITCHES, class_token=False, attention_pool=True),
        dict(_DEFAULTS, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        ("", "vision_model."),
        "embeddings.patch_embedding.weight",
        antialias=False,
    ),
    "dinov2": TowerClass(
        "Dinov2Model",
        dict(_VIT_SWITCHES, layer_scale=True),
        _DINOV2_DEFAULTS,
        ("", "dinov2."),
        "embeddings.cls_token",
        antialias=False,
    ),
    "dinov2_with_registers": TowerClass(
        "Dinov2WithRegistersModel",
        dict(_VIT_SWITCHES, layer_scale=True),
        dict(_DINOV2_DEFAULTS, patch_size=16, num_register_tokens=4),
        ("", "dinov2_with_registers."),
        "embeddings.cls_token",
        antialias=True,
    ),
}
BY_CLASS = {tower.name: tower for tower in TOWER_CLASSES.values()}
# Dual encoders whose vision half is one of the above, under `vision_config` in config.json.
DUAL_ENCODERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


def supported() -> str:
    """The classes init.image_tower reads, for error messages."""
    names = [f"{tower.name} (model_type {model_type!r})" for model_type, tower in TOWER_CLASSES.items()]
    return ", ".join(names) + "; CLIPModel / SiglipModel for their vision half"


def tower_config(hf_config: dict, described_as: str) -> tuple[TowerClass, dict]:
    """The tower class a config.json describes, and its (vision) settings with the class's defaults filled in."""
    model_type = hf_config.get("model_type")
    if model_type in DUAL_ENCODERS:
        model_type, hf_config = DUAL_ENCODERS[model_type], hf_config.get("vision_config") or {}
    if model_type not in TOWER_CLASSES:
        raise ConfigError(f"{described_as} has model_type={model_type!r}; init.image_tower supports {supported()}")
    tower = TOWER_CLASSES[model_type]
    return tower, {**tower.defaults, **hf_config}


def _require(settings: dict, key: str, expected, described_as: str) -> None:
    value = settings.get(key, expected)
    if value != expected:
        raise ConfigError(f"{described_as} has {key}={value!r}; ela_jax can only load {key}={expected!r}")


def square(value, key: str, described_as: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"{described_as} has a non-square {key} {value}; ela_jax's ViT is square")
        value = value[0]
    return int(value)


def activation(hidden_act: str, described_as: str) -> dict:
    """model.image / model.text activation keys for transformers' hidden_act."""
    if hidden_act == QUICK_GELU:
        return {"gelu_approximate": False, "quick_gelu": True}
    if hidden_act not in GELU_APPROXIMATE:
        raise ConfigError(
            f"{described_as} uses hidden_act={hidden_act!r}; ela_jax's towers support "
            f"{sorted([*GELU_APPROXIMATE, QUICK_GELU])}"
        )
    return {"gelu_approximate": GELU_APPROXIMATE[hidden_act], "quick_gelu": False}


def architecture(tower: TowerClass, settings: dict, described_as: str) -> dict:
    """The model.image keys for a checkpoint of `tower` with config `settings` (from tower_config); the checkpoint's
    own image_size is not among them (position embeddings are resized to data.image_size on load)."""
    _require(settings, "num_channels", 3, described_as)
    _require(settings, "qkv_bias", True, described_as)
    if tower.name.startswith("Dinov2"):
        _require(settings, "use_swiglu_ffn", False, described_as)
    if tower.name == "SiglipVisionModel":
        _require(settings, "vision_use_head", True, described_as)
    width = settings["hidden_size"]
    mlp_dim = int(width * settings["mlp_ratio"]) if "mlp_ratio" in tower.defaults else settings["intermediate_size"]
    image = dict(
        tower.switches,
        hf_class=tower.name,
        register_tokens=int(settings.get("num_register_tokens", 0)),
        width=width,
        depth=settings["num_hidden_layers"],
        num_heads=settings["num_attention_heads"],
        mlp_dim=mlp_dim,
        layer_norm_eps=float(settings["layer_norm_eps"]),
        patch_size=square(settings["patch_size"], "patch_size", described_as),
    )
    image.update(activation(settings["hidden_act"], described_as))
    return image
