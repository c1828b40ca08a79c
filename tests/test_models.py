"""Model shapes for every preset, masking of pads, and the lexicon vectors' definition inside the model."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ela_jax import config as config_lib
from ela_jax.models import lexicon
from ela_jax.models.ela import ELAModel, max_log_scale

PRESETS = {"tiny": config_lib.tiny_model, "ela_b16": config_lib.b16_model, "ela_l14": config_lib.l14_model}


def model_for(model_config, vocab_size: int = 30522) -> ELAModel:
    model_config = model_config.copy_and_resolve_references()
    model_config.vocab_size = vocab_size
    return ELAModel(model_config)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_has_the_documented_output_shapes(preset):
    model_config = PRESETS[preset]()
    model = model_for(model_config)
    size, length, batch = model_config.image.image_size, 16, 2
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens, mask)
    image_out, text_out, scales = jax.eval_shape(model.apply, variables, images, tokens, mask)
    patches = (size // model_config.image.patch_size) ** 2
    vocab = 30522
    assert image_out["hidden"].shape == (batch, patches + 1, model_config.image.width)
    assert image_out["global"].shape == (batch, model_config.embed_dim)
    assert image_out["token_embeddings"].shape == (batch, patches, model_config.token_dim)
    assert image_out["vocab_logits"].shape == (batch, patches, vocab)
    assert image_out["lexicon"].shape == (batch, vocab)
    assert text_out["hidden"].shape == (batch, length, model_config.text.width)
    assert text_out["lexicon"].shape == (batch, vocab)
    for output in (image_out, text_out):
        assert output["global"].dtype == jnp.float32 and output["lexicon"].dtype == jnp.float32
    assert set(scales) == {"global", "fine"}


def test_b16_parameter_count_matches_vit_b16_plus_bert_base():
    model = model_for(config_lib.b16_model())
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.uint8)
    tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images, tokens, tokens)["params"])
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    # transformers' ViTModel(add_pooling_layer=False) and BertModel(add_pooling_layer=False) for these configs.
    assert count(params["image_tower"]) == 85_798_656
    assert count(params["text_tower"]) == 108_891_648


@pytest.fixture(scope="module")
def tiny_model_and_params():
    model_config = config_lib.model_config(
        image_size=16,
        patch_size=4,
        image=dict(width=32, depth=2, num_heads=2, mlp_dim=64),
        text=dict(width=32, depth=2, num_heads=2, mlp_dim=64),
        max_length=12,
        embed_dim=16,
        token_dim=8,
    )
    model = model_for(model_config, vocab_size=50)
    images = jnp.zeros((1, 16, 16, 3), jnp.uint8)
    tokens = jnp.zeros((1, 12), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), images, tokens, jnp.ones((1, 12), bool))["params"])
    return model, params


@pytest.mark.integration
def test_text_outputs_ignore_whatever_sits_in_pad_positions(tiny_model_and_params):
    model, params = tiny_model_and_params
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 50, size=(3, 12)).astype(np.int32)
    mask = np.arange(12)[None, :] < np.array([[4], [7], [12]])
    other_pads = np.where(mask, tokens, rng.integers(5, 50, size=tokens.shape)).astype(np.int32)
    encode = jax.jit(lambda ids: model.apply({"params": params}, ids, mask, method=ELAModel.encode_text))
    first, second = encode(tokens), encode(other_pads)
    for key in ("global", "lexicon"):
        np.testing.assert_allclose(first[key], second[key], rtol=1e-5, atol=1e-6)
    real = mask[..., None]
    np.testing.assert_allclose(np.where(real, first["hidden"], 0), np.where(real, second["hidden"], 0), atol=1e-5)


def test_lexicon_vectors_max_pool_saturated_logits_over_real_tokens_only(tiny_model_and_params):
    model, params = tiny_model_and_params
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 50, size=(2, 12)).astype(np.int32)
    mask = np.arange(12)[None, :] < np.array([[5], [9]])
    apply = jax.jit(model.apply, static_argnames=("method", "with_token_logits", "with_patch_logits"))
    text = apply({"params": params}, tokens, mask, with_token_logits=True, method=ELAModel.encode_text)
    logits = np.asarray(text["vocab_logits"])
    for row, length in enumerate((5, 9)):
        real_tokens = logits[row, 1:length]  # CLS (position 0) and pads are excluded
        expected = np.log1p(np.max(np.maximum(real_tokens, 0.0), axis=0))
        np.testing.assert_allclose(text["lexicon"][row], expected, rtol=1e-5, atol=1e-6)
    images = rng.integers(0, 255, size=(2, 16, 16, 3)).astype(np.uint8)
    image = apply({"params": params}, images, with_patch_logits=True, method=ELAModel.encode_image)
    patch_logits = np.asarray(image["vocab_logits"])
    assert patch_logits.shape == (2, 16, 50)
    np.testing.assert_allclose(image["lexicon"], np.log1p(np.maximum(patch_logits, 0).max(axis=1)), rtol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("chunk", [0, 16])
def test_special_tokens_are_in_no_lexicon_vector_and_no_vocabulary_logit(tiny_model_and_params, chunk):
    """With the special ids' decoder bias pushed far up, they would top every lexicon vector; masked, their weights
    are 0 and their logits (what the ELA losses and MLM read) carry no mass and no gradient."""
    model, params = tiny_model_and_params
    special = (0, 1, 2, 3, 4)
    model_config = model.config.copy_and_resolve_references()
    model_config.lexicon.chunk = chunk
    masked_model = ELAModel(model_config, special_ids=special)
    params = {
        **params,
        **{
            head: {**params[head], "decoder_bias": params[head]["decoder_bias"].at[:5].set(50.0)}
            for head in ("image_lexicon", "text_lexicon")
        },
    }
    rng = np.random.default_rng(5)
    images = rng.integers(0, 255, size=(2, 16, 16, 3)).astype(np.uint8)
    tokens = rng.integers(0, 50, size=(2, 12)).astype(np.int32)
    mask = np.ones((2, 12), bool)
    image, text, _ = jax.jit(masked_model.apply)({"params": params}, images, tokens, mask)
    pooled = jax.jit(
        lambda p: masked_model.apply({"params": p}, images, patch_pool="mean", method=ELAModel.encode_image)
    )(params)
    for lexicon_vector in (image["lexicon"], text["lexicon"]):
        np.testing.assert_array_equal(lexicon_vector[:, :5], 0.0)
        assert np.all(np.asarray(lexicon_vector[:, 5:]).max(axis=1) > 0)
    for logits in (image["vocab_logits"], text["vocab_logits"], pooled["pooled_vocab_logits"]):
        np.testing.assert_array_equal(logits[..., :5], lexicon.MASKED_LOGIT)
    unmasked_image, _, _ = jax.jit(model.apply)({"params": params}, images, tokens, mask)
    np.testing.assert_allclose(image["lexicon"][:, 5:], unmasked_image["lexicon"][:, 5:], rtol=1e-6)
    assert np.all(np.asarray(unmasked_image["lexicon"][:, :5]) > 3.0), "the pushed-up special words would dominate"

    def pooled_softmax_mass(p):
        out = masked_model.apply({"params": p}, images, method=ELAModel.encode_image)
        return jax.nn.softmax(out["pooled_vocab_logits"])[:, :5].sum()

    mass, gradient = jax.jit(jax.value_and_grad(pooled_softmax_mass))(params)
    assert float(mass) == 0.0
    np.testing.assert_array_equal(gradient["image_lexicon"]["decoder_bias"][:5], 0.0)


def test_global_embeddings_are_unit_vectors(tiny_model_and_params):
    model, params = tiny_model_and_params
    images = np.random.default_rng(2).integers(0, 255, size=(3, 16, 16, 3)).astype(np.uint8)
    image = jax.jit(model.apply, static_argnames="method")({"params": params}, images, method=ELAModel.encode_image)
    np.testing.assert_allclose(np.linalg.norm(image["global"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(image["token_embeddings"], axis=-1), 1.0, rtol=1e-5)


@pytest.mark.integration
def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
    model_config = config_lib.tiny_model(image_size=16, patch_size=4, max_length=8)
    model_config.dtype = "bfloat16"
    model = model_for(model_config, vocab_size=40)
    images = jnp.zeros((2, 16, 16, 3), jnp.uint8)
    tokens = jnp.ones((2, 8), jnp.int32)
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, tokens, jnp.ones((2, 8), bool)))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    image_out, text_out, _ = jax.jit(model.apply)(variables, images, tokens, jnp.ones((2, 8), bool))
    assert image_out["hidden"].dtype == jnp.bfloat16
    for output in (image_out, text_out):
        assert output["vocab_logits"].dtype == jnp.float32 and output["global"].dtype == jnp.float32


@pytest.mark.parametrize("chunk", [0, 24])
def test_bfloat16_lexicon_logits_are_accumulated_in_float32(chunk):
    """The head's bfloat16 features x bfloat16 decoder, summed in float32: equal to a float64 product of the same
    bfloat16 inputs to float32 rounding, where a bfloat16 result would be off by about 2^-9 of each logit."""
    width, vocab = 384, 100
    head = lexicon.LexiconHead(
        width=width,
        vocab_size=vocab,
        padded_vocab_size=vocab,
        layer_norm_eps=1e-12,
        gelu_approximate=False,
        tied=False,
        chunk=chunk,
        dtype=jnp.bfloat16,
    )
    hidden = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, width)), jnp.float32)
    variables = nn.unbox(head.init(jax.random.key(1), hidden))
    variables["params"]["decoder_bias"] = jnp.linspace(-1.0, 1.0, vocab)
    # Jitted as the head is: eager bfloat16 ops round the intermediate features differently.
    features = jax.jit(lambda v, x: head.apply(v, x, method=lambda module, y: module._features(y)))(variables, hidden)
    assert features.dtype == jnp.bfloat16
    kernel = np.asarray(variables["params"]["decoder_kernel"].astype(jnp.bfloat16), np.float64)
    expected = np.asarray(features, np.float64) @ kernel + np.asarray(variables["params"]["decoder_bias"])
    logits = jax.jit(head.apply)(variables, hidden)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    mask = jnp.ones((2, 6), bool)
    pooled = jax.jit(lambda v, x, m: head.apply(v, x, m, ("max",), method="pooled"))(variables, hidden, mask)
    np.testing.assert_allclose(pooled["max"], expected.max(axis=1), rtol=1e-5, atol=1e-5)


def test_logit_scale_is_exp_of_its_parameter_with_gradient_at_and_past_the_cap(tiny_model_and_params):
    """The cap is a clamp of the parameter after each update (training/step.py); a clip here would stop the
    gradient once the parameter reaches it."""
    model, params = tiny_model_and_params
    cap = max_log_scale(model.config)

    def global_scale(log_scale):
        return model.apply({"params": {**params, "global_log_scale": log_scale}}, method=ELAModel.logit_scales)[
            "global"
        ]

    for log_scale in (cap - 0.5, cap, cap + 0.5):
        np.testing.assert_allclose(global_scale(jnp.asarray(log_scale)), np.exp(log_scale), rtol=1e-6)
        np.testing.assert_allclose(jax.grad(global_scale)(jnp.asarray(log_scale)), np.exp(log_scale), rtol=1e-6)


# --- the CPU-tuned layers compute what the library layers they replace compute (same parameters, same values)


def _reference_attention(params, x, key_mask, num_heads):
    """nn.DenseGeneral projections + jax.nn.dot_product_attention: what layers.MultiHeadAttention replaced."""
    width = x.shape[-1]
    project = lambda name: nn.DenseGeneral((num_heads, width // num_heads)).apply(  # noqa: E731
        {"params": params[name]}, x
    )
    mask = None if key_mask is None else key_mask[:, None, None, :]
    attended = jax.nn.dot_product_attention(project("query"), project("key"), project("value"), mask=mask)
    return nn.DenseGeneral(width, axis=(-2, -1)).apply({"params": params["output"]}, attended)


@pytest.mark.integration
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_dense_general_plus_dot_product_attention(masked):
    from ela_jax.models import layers

    x = jax.random.normal(jax.random.key(0), (3, 7, 24))
    key_mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [4], [1]])) if masked else None
    attention = layers.MultiHeadAttention(num_heads=3)
    params = nn.unbox(attention.init(jax.random.key(1), x, key_mask)["params"])
    reference = nn.DenseGeneral((3, 8), kernel_init=layers.default_kernel_init).init(jax.random.key(2), x)
    assert jax.tree.map(jnp.shape, params["query"]) == jax.tree.map(jnp.shape, reference["params"])

    def losses(fn):
        return jax.value_and_grad(lambda p: jnp.sum(fn(p) * jnp.cos(jnp.arange(24.0))))(params)

    ours = losses(lambda p: attention.apply({"params": p}, x, key_mask))
    theirs = losses(lambda p: _reference_attention(p, x, key_mask, 3))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), ours[1], theirs[1])


@pytest.mark.parametrize("batch_splits", [3, 4, 8])  # divides 6; shares 2 with it; more slices than rows
def test_attention_in_batch_slices_computes_the_same_values_and_gradients(batch_splits):
    from ela_jax.models import layers

    x = jax.random.normal(jax.random.key(0), (6, 7, 24))
    key_mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [4], [1], [2], [7], [5]]))
    whole, sliced = layers.MultiHeadAttention(num_heads=3), layers.MultiHeadAttention(3, batch_splits=batch_splits)
    params = whole.init(jax.random.key(1), x, key_mask)

    def value_and_grads(attention):
        loss = lambda p, x: jnp.sum(jnp.sin(attention.apply(p, x, key_mask)))  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    expected, got = value_and_grads(whole), value_and_grads(sliced)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), expected, got)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_fused_attention_computes_the_written_out_attention(dtype, tolerance):
    """jax.nn.dot_product_attention (its XLA implementation here; cuDNN on a GPU) gives `attend`'s values and
    gradients, key padding included."""
    from ela_jax.models import layers

    shape = (3, 7, 2, 8)
    query, key, value = (jax.random.normal(jax.random.key(i), shape).astype(dtype) for i in range(3))
    key_mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [4], [1]]))
    weights = jnp.cos(jnp.arange(16.0)).reshape(2, 8)

    def value_and_grads(attention):
        loss = lambda q, k, v: jnp.sum(attention(q, k, v, key_mask).astype(jnp.float32) * weights)  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(query, key, value)

    written = value_and_grads(layers.attend)
    fused = value_and_grads(lambda q, k, v, m: layers.fused_attend(q, k, v, m, "xla"))
    for expected, actual in zip(jax.tree.leaves(written), jax.tree.leaves(fused)):
        np.testing.assert_allclose(
            np.asarray(actual, np.float32), np.asarray(expected, np.float32), rtol=tolerance, atol=tolerance
        )


def test_fused_attention_is_chosen_for_half_precision_on_gpu_only(monkeypatch):
    from ela_jax.models import layers

    assert layers.fused_attention_implementation(jnp.bfloat16, 64) is None or jax.default_backend() == "gpu"
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    assert layers.fused_attention_implementation(jnp.bfloat16, 64) == "cudnn"
    assert layers.fused_attention_implementation(jnp.float32, 64) is None  # cuDNN's kernel is half precision only
    assert layers.fused_attention_implementation(jnp.bfloat16, 12) is None  # head size not a multiple of 8


def test_attention_projection_init_matches_dense_general():
    """Same key, same initial kernel as nn.DenseGeneral: seeded runs start where the library layers start."""
    from ela_jax.models import layers

    x = jnp.ones((1, 2, 24))
    ours = nn.unbox(layers.HeadProjection(3, 8).init(jax.random.key(5), 24))["params"]["kernel"]
    theirs = nn.DenseGeneral((3, 8), kernel_init=layers.default_kernel_init).init(jax.random.key(5), x)["params"]
    np.testing.assert_array_equal(ours, theirs["kernel"])
    heads = jnp.ones((1, 2, 3, 8))
    ours = nn.unbox(layers.HeadMerge().init(jax.random.key(6), heads, 24))["params"]["kernel"]
    theirs = nn.DenseGeneral(24, axis=(-2, -1), kernel_init=layers.default_kernel_init).init(jax.random.key(6), heads)
    np.testing.assert_array_equal(ours, theirs["params"]["kernel"])


def test_gelu_erf_form_matches_nn_gelu_and_its_gradient():
    from ela_jax.models import layers

    x = jnp.linspace(-9.0, 9.0, 1001)
    # 1 + erf cancels to 0 in the far negative tail (|gelu| < 1e-6 there), as in PyTorch: absolute tolerance.
    np.testing.assert_allclose(layers.gelu(x, False), nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
    grad = jax.vmap(jax.grad(lambda v: layers.gelu(v, False)))(x)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(lambda v: nn.gelu(v, approximate=False)))(x), atol=1e-6)


def test_patch_embedding_matches_the_strided_convolution():
    from ela_jax.models.vit import PatchEmbedding

    pixels = jax.random.normal(jax.random.key(0), (2, 10, 8, 3))  # 10 rows: VALID drops the last two
    ours = PatchEmbedding(width=5, patch_size=4)
    params = nn.unbox(ours.init(jax.random.key(1), pixels)["params"])
    conv = nn.Conv(5, kernel_size=(4, 4), strides=(4, 4), padding="VALID")
    expected = conv.apply({"params": params}, pixels).reshape(2, -1, 5)
    np.testing.assert_allclose(ours.apply({"params": params}, pixels), expected, rtol=1e-5, atol=1e-6)


def test_activation_constraints_reach_the_trace_under_the_sharding_context():
    """parallel.sharding_context turns the models' nn.with_logical_constraint calls into sharding constraints on the
    mesh axes the rules name (under the deprecated `with mesh:` Flax saw no mesh and they silently did nothing)."""
    from ela_jax import parallel

    config = config_lib.base_config()
    model = model_for(config_lib.tiny_model(), vocab_size=256)
    size = config_lib.tiny_model().image.image_size
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.uint8)
    tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    mask = jax.ShapeDtypeStruct((2, 8), jnp.bool_)
    variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens, mask)
    mesh = parallel.create_mesh(config.mesh)
    with parallel.sharding_context(mesh, parallel.logical_rules(config.mesh)):
        jaxpr = jax.make_jaxpr(model.apply)(variables, images, tokens, mask)
    # Printed, the jaxpr shows every constraint with its spec, nested scopes (remat, scan) included.
    specs = re.findall(r"spec=(P\([^\n]*\))\)\n", str(jaxpr))
    assert "P(('data', 'fsdp'), None, None)" in specs  # tower hidden states (act_batch, act_len, act_embed)
    assert "P(('data', 'fsdp'), None, 'tensor', None)" in specs  # attention heads
    assert "P(('data', 'fsdp'), None, 'tensor')" in specs  # patch / token vocabulary logits
