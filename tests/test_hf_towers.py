"""Hugging Face towers in and out, offline: each supported transformers class at a tiny random config is saved,
imported through init.image_tower / init.text_tower, matched on hidden states (1e-4, position embeddings resized
where data.image_size differs), exported as the same class and reloaded."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from ela_jax.config import ConfigError
from ela_jax.convert import from_pytorch, hf_export, keymap
from ela_jax.convert.position_resize import resize_positions
from ela_jax.models.ela import ELAModel
from ela_jax.models.vit import VisionTransformer
from ela_jax.torch_model import image_tower_states, text_tower_states
from ela_jax.validation import validate
from tests.helpers import make_tiny_config

TOLERANCE = 1e-4
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4)
IMAGE_TOWERS = {
    "ViTModel": lambda: transformers.ViTConfig(intermediate_size=48, hidden_act="gelu_pytorch_tanh", **TOWER),
    "CLIPVisionModel": lambda: transformers.CLIPVisionConfig(intermediate_size=48, **TOWER),
    "SiglipVisionModel": lambda: transformers.SiglipVisionConfig(intermediate_size=48, **TOWER),
    "Dinov2Model": lambda: transformers.Dinov2Config(mlp_ratio=2, **TOWER),
    "Dinov2WithRegistersModel": lambda: transformers.Dinov2WithRegistersConfig(
        mlp_ratio=2, num_register_tokens=2, **TOWER
    ),
}
PIXEL_MEAN, PIXEL_STD = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its initial value (zero biases, unit norms and layer scales would hide a mix-up)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def save_image_tower(name: str, directory) -> torch.nn.Module:
    model = randomise(getattr(transformers, name)(IMAGE_TOWERS[name]()))
    model.save_pretrained(directory)
    processor = {"do_rescale": True, "rescale_factor": 1 / 255, "image_mean": PIXEL_MEAN, "image_std": PIXEL_STD}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


def import_image_tower(directory, image_size: int):
    """(config, image_tower params as init.image_tower leaves them before step 0, their abstract shapes)."""
    config = make_tiny_config(**{"data.image_size": image_size, "init.image_tower": str(directory)})
    from_pytorch.apply_hf_architecture(config)
    abstract = abstract_image_params(config)
    zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract)
    return config, from_pytorch.load_pretrained_towers(config, {"image_tower": zeros})["image_tower"], abstract


def abstract_image_params(config) -> dict:
    size = config.model.image.image_size
    tower = VisionTransformer(config.model.image)
    return nn.unbox(jax.eval_shape(tower.init, jax.random.key(0), np.zeros((1, size, size, 3), np.float32)))["params"]


def reference_states(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """The tower's states in ela_jax's layout, the checkpoint's position embeddings interpolated by transformers."""
    kwargs = {} if type(model).__name__.startswith("Dinov2") else {"interpolate_pos_encoding": True}
    forward = model.forward
    with torch.no_grad():
        model.forward = lambda pixel_values: forward(pixel_values=pixel_values, **kwargs)
        try:
            return image_tower_states(model, torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
        finally:
            del model.forward


def assert_close(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = np.max(np.abs(actual.astype(np.float64) - expected))
    assert error <= TOLERANCE, f"{what}: max abs difference {error:.2e} > {TOLERANCE}"


# Checkpoints are 16 px (a 4 x 4 patch grid); every class but one also runs at another size, up or down. CLIP,
# SigLIP and DINOv2 with registers use every switch between them; ViT (test_convert.py imports it too) and DINOv2
# without registers run with the slow tests.
@pytest.mark.parametrize(
    "name, image_size",
    [
        pytest.param("ViTModel", 20, marks=pytest.mark.slow),
        ("CLIPVisionModel", 16),
        ("SiglipVisionModel", 24),
        pytest.param("Dinov2Model", 20, marks=pytest.mark.slow),
        ("Dinov2WithRegistersModel", 12),
    ],
)
def test_image_tower_imports_matches_exports_and_reloads(tmp_path, name, image_size):
    checkpoint = tmp_path / "checkpoint"
    reference = save_image_tower(name, checkpoint)
    config, params, abstract = import_image_tower(checkpoint, image_size)
    image = config.model.image
    assert (image.hf_class, image.image_size, image.width, image.depth) == (name, image_size, 32, 2)
    assert list(image.pixel_mean) == pytest.approx(PIXEL_MEAN) and list(image.pixel_std) == pytest.approx(PIXEL_STD)

    pixels = np.random.default_rng(1).normal(size=(2, image_size, image_size, 3)).astype(np.float32)
    ours = jax.jit(VisionTransformer(image).apply)({"params": params}, pixels)
    grid = image_size // 4
    assert ours.shape == (2, 1 + grid * grid, 32)
    assert_close(ours, reference_states(reference, pixels), f"{name} at {image_size}px")

    exported = tmp_path / "exported"
    hf_config = hf_export.image_config(config.model)
    hf_config.save_pretrained(exported)
    image_map = keymap.image_encoder(image, "")
    state_dict = hf_export.image_state_dict(config.model, image_map, {"image_tower": params})
    hf_export.save_weights(state_dict, str(exported / hf_export.WEIGHTS_FILE))
    reloaded = getattr(transformers, name).from_pretrained(exported, use_safetensors=True).eval()
    assert type(reloaded).__name__ == name
    with torch.no_grad():
        states = image_tower_states(reloaded, torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    assert_close(states, np.asarray(ours), f"{name} exported and reloaded by transformers")

    back = image_map.to_flax(dict(state_dict), {"image_tower": abstract}, source=str(exported))
    for (path, original), leaf in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(back["image_tower"])
    ):
        assert np.array_equal(leaf, original), jax.tree_util.keystr(path)


def test_unsupported_image_checkpoint_error_names_the_supported_classes(tmp_path):
    transformers.BeitConfig(**TOWER).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")  # never read: the class check comes first
    config = make_tiny_config(**{"data.image_size": 16, "init.image_tower": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"model_type='beit'; init.image_tower supports ViTModel .*CLIPVisionModel"):
        from_pytorch.apply_hf_architecture(config)


def test_image_size_off_the_patch_grid_is_a_config_error(tmp_path):
    save_image_tower("CLIPVisionModel", tmp_path)
    config = make_tiny_config(**{"data.image_size": 18, "init.image_tower": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"data.image_size 18 is not a multiple of the patch size 4"):
        from_pytorch.apply_hf_architecture(config)


def text_config(directory, tie_text_decoder: bool = True):
    config = make_tiny_config(**{"init.text_tower": str(directory), "model.lexicon.tie_text_decoder": tie_text_decoder})
    config.model.vocab_size = 40
    from_pytorch.apply_hf_architecture(config)
    return config


@pytest.mark.parametrize("tied", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_distilbert_imports_matches_exports_and_reloads(tmp_path, tied):
    hf_config = transformers.DistilBertConfig(
        vocab_size=40,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=48,
        max_position_embeddings=24,
        tie_word_embeddings=tied,
    )
    reference = randomise(transformers.DistilBertForMaskedLM(hf_config))
    reference.save_pretrained(tmp_path / "checkpoint")
    config = text_config(tmp_path / "checkpoint", tie_text_decoder=tied)
    text = config.model.text
    assert (text.hf_class, text.type_vocab_size, text.width, text.mlp_dim) == ("DistilBertForMaskedLM", 0, 32, 48)

    model = ELAModel(config.model)
    length = config.tokenizer.max_length
    ids, ones = np.zeros((1, length), np.int32), np.ones((1, length), bool)
    # The text side only: tracing the whole model's init would cost more than the test.
    text_side = lambda module, ids, mask: module.text_vocab_logits(module.text_tower(ids, mask))  # noqa: E731
    abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ones, method=text_side))["params"])
    assert "token_type_embeddings" not in abstract["text_tower"]
    params = from_pytorch.load_pretrained_towers(config, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract))

    rng = np.random.default_rng(2)
    token_ids = rng.integers(0, 40, (3, length)).astype(np.int32)
    mask = np.arange(length)[None, :] < np.array([[length], [9], [4]])

    text_tower = jax.jit(lambda params, *inputs: model.apply(params, *inputs, method=lambda m, *a: m.text_tower(*a)))
    hidden = text_tower({"params": params}, token_ids, mask)
    # Op by op: the head is a handful of ops, cheaper to dispatch than to compile as one program.
    logits = model.apply({"params": params}, hidden, method=ELAModel.text_vocab_logits)
    with torch.no_grad():
        expected_hidden, expected_logits = text_tower_states(
            reference, torch.from_numpy(token_ids), torch.from_numpy(mask)
        )
    real = mask[..., None]  # transformers leaves pads' states to the padding; ela_jax too, but neither is used
    assert_close(np.where(real, hidden, 0), np.where(real, expected_hidden.numpy(), 0), "DistilBERT hidden states")
    assert_close(np.where(real, logits, 0), np.where(real, expected_logits.numpy(), 0), "DistilBERT MLM logits")

    exported = tmp_path / "exported"
    text_map = keymap.export_layout(config.model)["text"]
    tokenizer = type("Tokenizer", (), {"pad_id": 0})()
    hf_export.text_config(config.model, tokenizer).save_pretrained(exported)
    hf_export.save_weights(text_map.to_torch(params, 40), str(exported / hf_export.WEIGHTS_FILE))
    reloaded = transformers.DistilBertForMaskedLM.from_pretrained(exported, use_safetensors=True).eval()
    with torch.no_grad():
        _, reloaded_logits = text_tower_states(reloaded, torch.from_numpy(token_ids), torch.from_numpy(mask))
    assert_close(np.where(real, reloaded_logits.numpy(), 0), np.where(real, logits, 0), "DistilBERT export reloaded")


def test_text_checkpoint_of_another_architecture_names_the_supported_ones(tmp_path):
    transformers.RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model_type='roberta'; init.text_tower supports BertForMaskedLM .*Distil"):
        text_config(tmp_path)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("old_grid, new_grid", [(4, 6), (6, 4), (37, 16)])
def test_position_resize_matches_torch_bicubic_interpolate(old_grid, new_grid, antialias):
    positions = np.random.default_rng(3).normal(size=(1, 1 + old_grid * old_grid, 8)).astype(np.float32)
    grid = torch.from_numpy(positions[:, 1:].reshape(1, old_grid, old_grid, 8)).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(
        grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=antialias
    )
    resized = resize_positions(positions, new_grid, prefix_tokens=1, antialias=antialias)
    assert resized.dtype == np.float32
    np.testing.assert_array_equal(resized[:, :1], positions[:, :1])  # the class token's embedding is kept
    assert_close(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 8).numpy(), "resized positions")


@pytest.mark.parametrize(
    "switches, message",
    [
        ({"class_token": False}, r"class_token=False needs model.image.attention_pool=True"),
        ({"class_token": False, "attention_pool": True, "register_tokens": 2}, r"register_tokens=2 .* need"),
        ({"final_norm": "patches"}, r"model.image.final_norm='patches' is not one of"),
        ({"hf_class": "BeitModel"}, r"model.image.hf_class='BeitModel' is not one of"),
    ],
)
def test_inconsistent_image_switches_are_config_errors(switches, message):
    config = make_tiny_config(**{f"model.image.{key}": value for key, value in switches.items()})
    with pytest.raises(ConfigError, match=message):
        validate(config, num_devices=1)


def test_export_refuses_switches_its_class_cannot_hold(tmp_path):
    save_image_tower("CLIPVisionModel", tmp_path)
    config = make_tiny_config(**{"data.image_size": 16, "init.image_tower": str(tmp_path)})
    from_pytorch.apply_hf_architecture(config)
    config.model.image.layer_scale = True
    with pytest.raises(ValueError, match=r"but CLIPVisionModel is .*set model.image.hf_class"):
        hf_export.image_config(config.model)
