"""PyTorch interop: exports load in stock transformers and reproduce the JAX model (fp32, 1e-4), round trips are
bit-identical, Hugging Face checkpoints initialise the towers, and unsafe or mismatched checkpoints are refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import ela_jax
from configs.ela_minilm import minilm_dir
from ela_jax import config as config_lib
from ela_jax.config import ConfigError
from ela_jax.convert import from_pytorch, hf_export, to_pytorch
from ela_jax.data import images as images_lib
from ela_jax.experiment import Experiment, load_config
from ela_jax.inference import ELAInference
from ela_jax.models import layers
from ela_jax.models.ela import ELAModel
from ela_jax.torch_model import ELATorch
from ela_jax.training.loop import train
from tests.helpers import abstract_params, make_tiny_config, random_params, save_workdir, set_keys

TOLERANCE = 1e-4
TEXTS = [
    "a red circle next to a blue square",
    "Two GREEN triangles, above the crimson cross!",
    "an azure bar at the bottom left of the picture " * 4,  # longer than max_length: truncated
    "unknown wörds und Ümlaute ... 123",
]


def small_config(**overrides):
    """Two layers per tower (layer indices matter), tanh GELU and eps 1e-6 in the ViT, 16 px images."""
    config = make_tiny_config(
        **{"data.image_size": 16, "data.num_train": 64, "data.num_test": 8, "batch_size": 8, "eval.batch_size": 8}
    )
    config.model = config_lib.model_config(
        image_size=16,
        patch_size=4,
        image=dict(width=32, depth=2, num_heads=2, mlp_dim=64),
        text=dict(width=32, depth=2, num_heads=4, mlp_dim=48),
        max_length=16,
        embed_dim=24,
        token_dim=16,
    )
    config.model.image.gelu_approximate = True
    config.model.image.layer_norm_eps = 1e-6
    return set_keys(config, overrides)


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def zero_vocab_padding(params: dict, vocab_size: int) -> dict:
    def zero(path, leaf):
        name = jax.tree_util.keystr(path)
        axis = 0 if ("word_embeddings" in name or "decoder_bias" in name) else 1 if "decoder_kernel" in name else None
        if axis is None:
            return leaf
        leaf = np.array(leaf)
        np.moveaxis(leaf, axis, 0)[vocab_size:] = 0.0
        return leaf

    return jax.tree_util.tree_map_with_path(zero, params)


@pytest.fixture(scope="module")
def random_export(tmp_path_factory):
    """A workdir holding random weights (untied text decoder, non-default pixel statistics, layers under nn.scan, a
    padded vocabulary, chunked lexicon pooling), exported by the CLI."""
    workdir, output = str(tmp_path_factory.mktemp("random_workdir")), str(tmp_path_factory.mktemp("random_export"))
    config = small_config(
        **{
            "model.lexicon.tie_text_decoder": False,
            "model.global_pool": "mean",
            "model.image.pixel_mean": (0.48, 0.46, 0.41),
            "model.image.pixel_std": (0.27, 0.26, 0.28),
            "model.scan_layers": True,
            "model.vocab_multiple": 128,
            "model.lexicon.chunk": 32,
        }
    )
    experiment = Experiment.build(config, workdir)
    # Padding words carry no information: exports drop them and imports zero them, so start them at zero here.
    params = zero_vocab_padding(random_params(experiment), experiment.config.model.vocab_size)
    # The latest checkpoint (9) is not the one asked for: --step picks 7.
    save_workdir(experiment, {7: params, 9: jax.tree.map(np.zeros_like, params)})
    to_pytorch.main(["--workdir", workdir, "--output", output, "--step", "7"])
    return experiment, params, output


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A few real training steps with the default (tied) decoder, exported by the CLI."""
    workdir, output = str(tmp_path_factory.mktemp("trained_workdir")), str(tmp_path_factory.mktemp("trained_export"))
    config = small_config(**{"total_steps": 3, "optim.warmup_steps": 1, "optim.lr": 5e-3, "log.every_steps": 1})
    train(config, workdir)
    to_pytorch.main(["--workdir", workdir, "--output", output])
    return workdir, output


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = np.max(np.abs(actual.astype(np.float64) - expected))
    assert error <= TOLERANCE, f"{what}: max abs difference {error:.2e} > {TOLERANCE}"


def top_words(lexicon: np.ndarray, k: int = 20) -> np.ndarray:
    return np.argsort(-lexicon, axis=1, kind="stable")[:, :k]


def assert_same_encodings(jax_model, torch_model: ELATorch, images: np.ndarray, texts: list[str]) -> None:
    for kind, inputs in (("images", images), ("texts", texts)):
        expected = getattr(jax_model, f"encode_{kind}")(inputs, return_tokens=True)
        actual = getattr(torch_model, f"encode_{kind}")(inputs, return_tokens=True)
        assert set(actual) == set(expected)
        for key in ("global", "lexicon", "tokens"):
            assert actual[key].dtype == np.float32
            assert_close(actual[key], expected[key], f"{kind} {key}")
        np.testing.assert_array_equal(top_words(actual["lexicon"]), top_words(expected["lexicon"]))
        if kind == "texts":
            np.testing.assert_array_equal(actual["mask"], expected["mask"])


def assert_same_non_square_encodings(jax_model, torch_model: ELATorch, output: str) -> None:
    """PIL images and arrays of other sizes and shapes encode the same through ela_jax.load, ELATorch and the
    exported ViTImageProcessor + ViTModel."""
    inputs = non_square_images() + list(random_images(2, 16, seed=5))  # five, the batch the encoders compiled for
    expected = jax_model.encode_images(inputs, return_tokens=True)
    actual = torch_model.encode_images(inputs, return_tokens=True)
    for key in ("global", "lexicon", "tokens"):
        assert_close(actual[key], expected[key], f"non-square images, ELATorch {key}")
    processor = transformers.ViTImageProcessor.from_pretrained(os.path.join(output, "image"))
    vit = transformers.ViTModel.from_pretrained(os.path.join(output, "image"), add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = vit(**processor(inputs, return_tensors="pt")).last_hidden_state
    assert_close(hidden.numpy(), expected["tokens"], "non-square images, ViTImageProcessor + ViTModel")


@pytest.mark.integration
def test_elatorch_matches_ela_jax_load_with_random_weights(random_export):
    experiment, params, output = random_export
    with open(os.path.join(output, "ela_config.json")) as f:
        assert json.load(f)["source"] == {"workdir": os.path.abspath(experiment.workdir), "step": 7}
    torch_model = ELATorch.from_pretrained(output)
    assert not torch_model.training
    jax_model = ela_jax.load(experiment.workdir, step=7)
    assert_same_encodings(jax_model, torch_model, random_images(5, 16), TEXTS)
    assert_same_non_square_encodings(jax_model, torch_model, output)
    max_log_scale = np.log(1.0 / experiment.config.model.min_temperature)
    for name, scale in torch_model.logit_scales().items():
        assert scale == pytest.approx(np.exp(min(params[f"{name}_log_scale"], max_log_scale)), rel=1e-6)


def non_square_images() -> list:
    """A wide PIL image, a tall uint8 array and a palette PIL image, none of them 16 x 16."""
    rng = np.random.default_rng(4)
    wide = Image.fromarray(rng.integers(0, 256, (17, 41, 3), dtype=np.uint8))
    tall = rng.integers(0, 256, (30, 19, 3), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)).convert("P")
    return [wide, tall, palette]


def test_the_exported_image_processor_crops_as_evaluation_does_without_squashing():
    """preprocessor_config.json drives ViTImageProcessor to the pixels ela_jax.load and ELATorch feed the tower:
    shorter side resized, centre crop (a square squash of the same images differs)."""
    image_config = small_config().model.image
    processor = transformers.ViTImageProcessor(**hf_export.image_processor_config(image_config))
    inputs = non_square_images()
    pixels = processor(inputs, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    ours = images_lib.model_images(inputs, 16)
    assert ours.shape == (3, 16, 16, 3) and ours.dtype == np.uint8
    mean, std = np.asarray(image_config.pixel_mean), np.asarray(image_config.pixel_std)
    np.testing.assert_allclose(pixels, (ours / 255.0 - mean) / std, atol=1e-5)
    squashed = np.asarray(Image.fromarray(inputs[1]).resize((16, 16), Image.Resampling.BILINEAR))
    assert np.abs(squashed.astype(int) - ours[1]).max() > 50
    assert images_lib.model_images(ours, 16) is ours  # a batch at the model's size passes unchanged
    with pytest.raises(ValueError, match="image 1 must be a PIL image or a uint8"):
        images_lib.model_images([inputs[1], inputs[1].astype(np.float32)], 16)


@pytest.mark.integration  # trains, then converts
@pytest.mark.slow  # trains (about a minute of compilation); the random-weight test checks the same contract
def test_elatorch_matches_ela_jax_load_after_training(trained_export):
    workdir, output = trained_export
    assert_same_encodings(ela_jax.load(workdir), ELATorch.from_pretrained(output), random_images(5, 16, seed=1), TEXTS)


@pytest.mark.integration  # spawns a process
def test_elatorch_imports_no_jax():
    code = (
        "import sys, ela_jax.torch_model; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('jax', 'flax')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.integration
def test_stock_transformers_classes_reproduce_the_towers_and_mlm_head(random_export):
    experiment, params, output = random_export
    tokenizer = transformers.BertTokenizerFast.from_pretrained(os.path.join(output, "text"))
    # padding/truncation to the trained max_length come from the saved tokenizer config.
    encoded = tokenizer(TEXTS, padding="max_length", truncation=True, return_tensors="pt")
    token_ids, mask = experiment.tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(encoded["input_ids"].numpy(), token_ids)
    np.testing.assert_array_equal(encoded["attention_mask"].numpy().astype(bool), mask)

    mlm = transformers.BertForMaskedLM.from_pretrained(os.path.join(output, "text")).eval()
    with torch.no_grad():
        mlm_outputs = mlm(**encoded, output_hidden_states=True)
    variables = {"params": params}
    jax_text = experiment.model.apply(
        variables, token_ids, mask, with_lexicon=False, with_tokens=False, method=ELAModel.encode_text
    )
    assert_close(mlm_outputs.hidden_states[-1].numpy(), np.asarray(jax_text["hidden"]), "BertForMaskedLM hidden states")
    jax_mlm_logits = experiment.model.apply(variables, token_ids, mask, method=ELAModel.mlm_logits)
    # The stock head scores the special tokens too; ela_jax keeps them out of every vocabulary logit.
    words = np.setdiff1d(np.arange(jax_mlm_logits.shape[-1]), experiment.tokenizer.special_ids)
    assert_close(mlm_outputs.logits.numpy()[..., words], np.asarray(jax_mlm_logits)[..., words], "MLM logits")
    np.testing.assert_array_equal(np.asarray(jax_mlm_logits)[..., list(experiment.tokenizer.special_ids)], -1e4)

    images = random_images(3, 16, seed=2)
    processor = transformers.ViTImageProcessor.from_pretrained(os.path.join(output, "image"))
    vit = transformers.ViTModel.from_pretrained(os.path.join(output, "image"), add_pooling_layer=False).eval()
    with torch.no_grad():
        vit_hidden = vit(**processor(list(images), return_tensors="pt")).last_hidden_state
    jax_image = experiment.model.apply(
        variables, images, with_lexicon=False, with_tokens=False, method=ELAModel.encode_image
    )
    assert_close(vit_hidden.numpy(), np.asarray(jax_image["hidden"]), "ViTModel last_hidden_state")


def assert_bit_identical(restored: dict, params: dict) -> None:
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    for (path, original), leaf in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(restored)):
        assert leaf.dtype == original.dtype and np.array_equal(leaf, original), jax.tree_util.keystr(path)


def test_jax_to_pytorch_to_jax_is_bit_identical(random_export):
    experiment, params, output = random_export
    assert_bit_identical(
        from_pytorch.load_exported(output, experiment.config.model, abstract_params(experiment)), params
    )


@pytest.mark.integration  # trains, then converts
@pytest.mark.slow  # trains; the random-weight round trip covers every parameter too
def test_jax_to_pytorch_to_jax_is_bit_identical_after_training(trained_export):
    workdir, output = trained_export
    experiment = Experiment.build(load_config(workdir), workdir)
    params = jax.device_get(experiment.restore_state().params)
    assert_bit_identical(
        from_pytorch.load_exported(output, experiment.config.model, abstract_params(experiment)), params
    )


@pytest.mark.integration  # converts the real MiniLM checkpoint
def test_text_tower_from_minilm_reproduces_bert_model(tmp_path):
    """Architecture from MiniLM's config.json, weights into the params; MiniLM has no MLM head, so that is kept."""
    config = small_config(
        **{
            "tokenizer.vocab": "bert-base-uncased",
            "tokenizer.max_length": 32,
            "model.text.max_position_embeddings": 512,
            "init.text_tower": minilm_dir(),
        }
    )
    experiment = Experiment.build(config, str(tmp_path))
    config = experiment.config
    assert (config.model.text.width, config.model.text.depth, config.model.text.num_heads) == (384, 6, 12)
    zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract_params(experiment))
    params = from_pytorch.load_pretrained_towers(config, zeros)
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(params["text_lexicon"]))
    sentences = [
        "A man is riding a horse on the beach.",
        "Two dogs play with a red ball in the park.",
        "The quick brown fox jumps over the lazy dog.",
    ]
    ours = ELAInference(experiment, params).encode_texts(sentences, return_tokens=True)

    tokenizer = transformers.BertTokenizerFast.from_pretrained(minilm_dir())
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    np.testing.assert_array_equal(encoded["input_ids"].numpy(), experiment.tokenizer.encode(sentences)[0])
    bert = transformers.BertModel.from_pretrained(minilm_dir()).eval()
    with torch.no_grad():
        reference = bert(**encoded).last_hidden_state.numpy()
    assert_close(ours["tokens"], reference, "MiniLM last_hidden_state")


def test_image_tower_import_takes_architecture_pixels_and_weights(random_export, tmp_path):
    experiment, params, output = random_export
    config = small_config(**{"init.image_tower": os.path.join(output, "image")})
    config.model.image.update(depth=1, gelu_approximate=False, layer_norm_eps=1e-12)  # overwritten by the import
    importer = Experiment.build(config, str(tmp_path))
    config = importer.config
    image = config.model.image
    assert (image.depth, image.gelu_approximate, image.layer_norm_eps) == (2, True, 1e-6)
    assert image.pixel_mean == pytest.approx((0.48, 0.46, 0.41))
    assert image.pixel_std == pytest.approx((0.27, 0.26, 0.28))
    zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract_params(importer))
    loaded = from_pytorch.load_pretrained_towers(config, zeros)
    exported = layers.unstack_layers(params["image_tower"])  # exported from a scanned model, imported unrolled
    for (path, expected), leaf in zip(
        jax.tree_util.tree_leaves_with_path(exported), jax.tree.leaves(loaded["image_tower"])
    ):
        assert np.array_equal(leaf, expected), jax.tree_util.keystr(path)
    assert not np.any(loaded["text_tower"]["word_embeddings"]["embedding"])  # the text tower was not touched


class _WritesAFileWhenUnpickled:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickled_checkpoint_is_refused_unopened(tmp_path):
    checkpoint, sentinel = tmp_path / "bert_bin", tmp_path / "unpickled"
    checkpoint.mkdir()
    shutil.copy(os.path.join(minilm_dir(), "config.json"), checkpoint / "config.json")
    with open(checkpoint / "pytorch_model.bin", "wb") as f:
        pickle.dump(_WritesAFileWhenUnpickled(str(sentinel)), f)
    config = small_config(**{"tokenizer.vocab": "bert-base-uncased", "init.text_tower": str(checkpoint)})
    with pytest.raises(ConfigError, match=r"pytorch_model\.bin but no model\.safetensors.*refused"):
        Experiment.build(config, str(tmp_path / "workdir"))
    with pytest.raises(ConfigError, match="refused"):
        from_pytorch.load_pretrained_towers(config, {})
    assert not sentinel.exists()


def test_frozen_expansion_from_a_checkpoint_without_mlm_head_is_refused():
    """MiniLM is a BertModel: a frozen copy of its text side would hold a random lexicon head for good."""
    overrides = {"tokenizer.vocab": "bert-base-uncased", "init.text_tower": minilm_dir(), "objective.ela.beta": 0.3}
    config = small_config(**overrides, **{"objective.ela.target_source": "frozen"})
    config.model.text.depth = 6
    with pytest.raises(ConfigError, match="target_source='frozen'.*has no MLM head"):
        from_pytorch.load_pretrained_towers(config, {})


def _bert_dir_with(tmp_path, **changes) -> str:
    directory = tmp_path / "bert"
    directory.mkdir()
    with open(os.path.join(minilm_dir(), "config.json")) as f:
        hf_config = {**json.load(f), **changes}
    (directory / "config.json").write_text(json.dumps(hf_config))
    (directory / "model.safetensors").symlink_to(os.path.join(minilm_dir(), "model.safetensors"))
    return str(directory)


def _vit_dir_for(tmp_path, image_size: int) -> str:
    directory = tmp_path / "vit"
    transformers.ViTConfig(image_size=image_size).save_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"")  # never read by the architecture step
    return str(directory)


@pytest.mark.parametrize(
    "overrides, hf_changes, message",
    [
        (
            {"tokenizer.vocab": "world"},
            {},
            r"vocab_size 30522 but the tokenizer \(tokenizer.vocab='world'\) has \d+ words",
        ),
        (
            {"tokenizer.max_length": 600, "model.text.max_position_embeddings": 600},
            {},
            r"tokenizer.max_length 600 exceeds the 512 positions",
        ),
        ({}, {"hidden_act": "relu"}, r"hidden_act='relu'"),
        ({}, {"model_type": "roberta"}, r"model_type='roberta'; init.text_tower supports BertForMaskedLM"),
    ],
)
def test_mismatched_text_checkpoint_is_a_config_error(tmp_path, overrides, hf_changes, message):
    config = small_config(
        **{
            "tokenizer.vocab": "bert-base-uncased",
            "model.text.max_position_embeddings": 512,
            "init.text_tower": _bert_dir_with(tmp_path, **hf_changes),
            **overrides,
        }
    )
    with pytest.raises(ConfigError, match=message):
        Experiment.build(config, str(tmp_path / "workdir"))


def test_vit_for_another_resolution_takes_data_image_size(tmp_path):
    """The position embeddings are resized on load (tests/test_hf_towers.py checks the values)."""
    config = small_config(**{"data.image_size": 32, "init.image_tower": _vit_dir_for(tmp_path, 224)})
    from_pytorch.apply_hf_architecture(config)
    assert (config.model.image.image_size, config.model.image.patch_size) == (32, 16)


def test_elatorch_asks_transformers_for_safetensors_only(tmp_path, monkeypatch):
    """A pickled pytorch_model.bin beside (or instead of) the safetensors must never be loaded: it can run code."""
    calls = []

    class Recorded(Exception):
        pass

    def record(name):
        def from_pretrained(directory, **kwargs):
            calls.append((name, kwargs.get("use_safetensors")))
            raise Recorded  # the recorded call is all this test needs

        return from_pretrained

    monkeypatch.setattr(transformers.BertForMaskedLM, "from_pretrained", record("text"))
    monkeypatch.setattr(transformers.ViTModel, "from_pretrained", record("image"))
    (tmp_path / "ela_config.json").write_text(json.dumps({"text": "text", "image": "image"}))
    with pytest.raises(Recorded):
        ELATorch.from_pretrained(str(tmp_path))
    monkeypatch.setattr(transformers.BertForMaskedLM, "from_pretrained", lambda directory, **kwargs: None)
    with pytest.raises(Recorded):
        ELATorch.from_pretrained(str(tmp_path))
    assert calls == [("text", True), ("image", True)]


@pytest.mark.integration  # compiles the image side of a whole model
@pytest.mark.slow  # tests/test_hf_towers.py checks each class's tower states and its export at the tower level
def test_elatorch_loads_a_siglip_image_tower_export(tmp_path):
    checkpoint = tmp_path / "siglip"
    siglip = transformers.SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=16, patch_size=4
    )
    transformers.SiglipVisionModel(siglip).save_pretrained(checkpoint)
    config = small_config(**{"data.image_size": 24, "init.image_tower": str(checkpoint)})
    experiment = Experiment.build(config, str(tmp_path / "workdir"))
    params = random_params(experiment)
    output = str(tmp_path / "export")
    to_pytorch.export(experiment.config, experiment.tokenizer, params, output)
    torch_model = ELATorch.from_pretrained(output)
    assert type(torch_model.image_model) is transformers.SiglipVisionModel
    assert torch_model.image_model.config.image_size == 24
    expected = ELAInference(experiment, params).encode_images(random_images(3, 24), return_tokens=True)
    actual = torch_model.encode_images(random_images(3, 24), return_tokens=True)
    for key in ("global", "lexicon", "tokens"):
        assert_close(actual[key], expected[key], f"SigLIP export {key}")
