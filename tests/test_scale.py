"""Memory-lean pieces equal their dense versions: chunked lexicon pooling, vocabulary padding, gradient accumulation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ela_jax.models import lexicon
from tests.helpers import model_inputs, tiny_model

POOLS = ("max", "mean", "logsumexp")


def lexicon_inputs(seed: int, vocab: int = 37):
    rng = np.random.default_rng(seed)
    features = jnp.asarray(rng.normal(size=(3, 5, 8)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(8, vocab)).astype(np.float32))
    bias = jnp.asarray(rng.normal(size=(vocab,)).astype(np.float32))
    token_mask = jnp.asarray(np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], bool))
    weights = jnp.asarray(rng.normal(size=(len(POOLS), 3, vocab)).astype(np.float32))
    return features, kernel, bias, token_mask, weights


def pooled_objective(features, kernel, bias, token_mask, weights, chunk: int):
    """A scalar that reads every pool of every word, so its gradient checks the whole chunked backward pass."""
    pooled = lexicon.pool_vocab_logits(features, kernel, bias, token_mask, POOLS, chunk)
    return sum(jnp.sum(w * jnp.tanh(pooled[how])) for w, how in zip(weights, POOLS))


@pytest.mark.integration
@pytest.mark.parametrize("chunk", [4, 8, 36])
def test_chunked_pooling_equals_dense_pooling_in_values_and_gradients(chunk):
    features, kernel, bias, token_mask, weights = lexicon_inputs(0)
    dense = lexicon.pool_vocab_logits(features, kernel, bias, token_mask, POOLS, chunk=0)
    chunked = jax.jit(functools.partial(lexicon.pool_vocab_logits, pools=POOLS, chunk=chunk))(
        features, kernel, bias, token_mask
    )
    for how in POOLS:
        np.testing.assert_allclose(chunked[how], dense[how], rtol=1e-5, atol=1e-5, err_msg=how)
    logits = np.einsum("blw,wv->blv", features, kernel) + np.asarray(bias)
    np.testing.assert_allclose(dense["max"][0], logits[0].max(axis=0), rtol=1e-5)  # row 0 has no padding
    grad = jax.grad(pooled_objective, argnums=(0, 1, 2))
    dense_grads = grad(features, kernel, bias, token_mask, weights, 0)
    chunked_grads = jax.jit(grad, static_argnums=5)(features, kernel, bias, token_mask, weights, chunk)
    for name, expected, actual in zip(("features", "kernel", "bias"), dense_grads, chunked_grads):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def test_chunked_pooling_never_holds_the_dense_logits():
    """The compiled chunked gradient's temporaries stay far below one [batch, tokens, vocab] float32 tensor."""
    batch, tokens, width, vocab = 16, 64, 16, 8192
    features = jax.ShapeDtypeStruct((batch, tokens, width), jnp.float32)
    kernel = jax.ShapeDtypeStruct((width, vocab), jnp.float32)
    bias = jax.ShapeDtypeStruct((vocab,), jnp.float32)
    mask = jax.ShapeDtypeStruct((batch, tokens), jnp.bool_)

    def temp_bytes(chunk: int) -> int:
        def loss(features, kernel, bias, mask):
            pooled = lexicon.pool_vocab_logits(features, kernel, bias, mask, ("max",), chunk)
            return jnp.sum(lexicon.saturate(pooled["max"]))

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(features, kernel, bias, mask).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    dense_logits_bytes = batch * tokens * vocab * 4
    assert temp_bytes(0) >= dense_logits_bytes
    assert temp_bytes(128) < dense_logits_bytes / 8


@pytest.mark.integration
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_padded_vocabulary_params_are_padded_and_outputs_are_not(tied):
    import flax.linen as nn

    padded, exact = tiny_model(vocab_multiple=128, tied=tied), tiny_model(tied=tied)
    images, tokens, mask = model_inputs()
    params = nn.unbox(padded.init(jax.random.key(0), images, tokens, mask))["params"]
    assert params["text_tower"]["word_embeddings"]["embedding"].shape == (128, 32)
    assert params["image_lexicon"]["decoder_kernel"].shape == (32, 128)
    image_out, text_out, _ = padded.apply({"params": params}, images, tokens, mask)
    for out in (image_out, text_out):
        assert out["lexicon"].shape == (2, 50) and out["vocab_logits"].shape[-1] == 50
    # The padding words are dead weight: the real words' outputs are those of an unpadded model with the same
    # parameters on the real rows.
    cut = jax.tree_util.tree_map_with_path(lambda path, x: _cut_vocab(path, x, 50), params)
    exact_image, exact_text, _ = exact.apply({"params": cut}, images, tokens, mask)
    np.testing.assert_allclose(image_out["lexicon"], exact_image["lexicon"], rtol=1e-6)
    np.testing.assert_allclose(text_out["vocab_logits"], exact_text["vocab_logits"], rtol=1e-6)


def _cut_vocab(path, array, vocab: int):
    name = "/".join(str(getattr(key, "key", key)) for key in path)
    if name.endswith("word_embeddings/embedding") or name.endswith("decoder_bias"):
        return array[:vocab]
    if name.endswith("decoder_kernel"):
        return array[:, :vocab]
    return array


def test_chunked_model_outputs_equal_dense_model_outputs():
    import flax.linen as nn

    from ela_jax.models.ela import ELAModel

    dense, chunked = tiny_model(vocab_multiple=128), tiny_model(vocab_multiple=128, chunk=16)
    images, tokens, mask = model_inputs()
    params = nn.unbox(dense.init(jax.random.key(1), images, tokens, mask))["params"]
    for pool in POOLS:
        encode = lambda model: model.apply(  # noqa: E731
            {"params": params}, images, patch_pool=pool, with_tokens=False, method=ELAModel.encode_image
        )
        expected, actual = encode(dense), encode(chunked)
        np.testing.assert_allclose(actual["pooled_vocab_logits"], expected["pooled_vocab_logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(actual["lexicon"], expected["lexicon"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"objective.fine_weight": 0.5, "objective.ela.beta": 0.5},
        {"objective.ela.loss": "lex_contrastive", "model.lexicon.chunk": 16},
    ],
    ids=["filip_soft_ce_expansion", "lex_contrastive_chunked"],
)
@pytest.mark.integration
def test_gradient_accumulation_gives_the_full_batch_gradient(tiny_config, tmp_path, overrides):
    """GradCache over 4 micro-batches: the same loss, metrics and gradient as one step on the whole batch."""
    from ela_jax.experiment import Experiment
    from ela_jax.training.step import ObjectiveBuilder, Vocabulary

    config = tiny_config(batch_size=16, **overrides)
    experiment = Experiment.build(config, str(tmp_path))
    config = experiment.config
    state = experiment.state_factory().create(config.seed)
    objective = ObjectiveBuilder(experiment.model, config, Vocabulary.from_tokenizer(experiment.tokenizer, True))
    rng = np.random.default_rng(4)
    batch = {
        "images": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
        "token_ids": rng.integers(5, experiment.tokenizer.vocab_size, (16, 16)).astype(np.int32),
        "mask": np.arange(16)[None, :] < rng.integers(3, 17, (16, 1)),
    }
    step, key = jnp.asarray(7), jax.random.key(3)
    full = jax.jit(jax.value_and_grad(objective, has_aux=True))(state.params, state.teacher, batch, step, key)
    accumulated = jax.jit(objective.accumulated_gradients, static_argnums=5)(
        state.params, state.teacher, batch, step, key, 4
    )
    (full_loss, full_metrics), full_grads = full
    (loss, metrics), grads = accumulated
    np.testing.assert_allclose(loss, full_loss, rtol=1e-5)
    assert set(metrics) == set(full_metrics) and "loss_mlm" in metrics
    for name in metrics:
        np.testing.assert_allclose(metrics[name], full_metrics[name], rtol=1e-5, err_msg=name)
    # Leaves whose true gradient is ~0 differ by float noise; compare against the largest gradient entry overall.
    scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(full_grads))
    flat_full = jax.tree_util.tree_leaves_with_path(full_grads)
    for (path, expected), actual in zip(flat_full, jax.tree.leaves(grads)):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.integration
@pytest.mark.parametrize("remat_policy", ["full", "dots_no_batch"])
def test_scanned_rematerialised_stack_equals_the_unrolled_stack(remat_policy):
    """nn.scan + remat: the same outputs and gradients as the plain layer loop, parameters stacked on `layers`."""
    import flax.linen as nn

    from ela_jax.models import layers

    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32)
    key_mask = jnp.asarray(np.arange(5)[None, :] < np.array([[3], [5]]))
    shape = dict(depth=3, num_heads=2, mlp_dim=64, pre_norm=False, layer_norm_eps=1e-12, gelu_approximate=False)
    unrolled = layers.TransformerStack(**shape)
    scanned = layers.TransformerStack(**shape, scan=True, remat=True, remat_policy=remat_policy)
    params = nn.unbox(unrolled.init(jax.random.key(0), x, key_mask))["params"]
    stacked = layers.stack_layers(params)
    assert stacked["layers"]["mlp"]["intermediate"]["kernel"].shape == (3, 32, 64)
    spec = nn.get_partition_spec(scanned.init(jax.random.key(0), x, key_mask))["params"]
    assert spec["layers"]["mlp"]["intermediate"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "mlp")
    loss = lambda model, p: jnp.sum(jnp.tanh(model.apply({"params": p}, x, key_mask)))  # noqa: E731
    np.testing.assert_allclose(loss(scanned, stacked), loss(unrolled, params), rtol=1e-5)
    scanned_grads = layers.unstack_layers(jax.grad(functools.partial(loss, scanned))(stacked))
    unrolled_grads = jax.grad(functools.partial(loss, unrolled))(params)
    for expected, actual in zip(jax.tree.leaves(unrolled_grads), jax.tree.leaves(scanned_grads)):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)
    round_trip = layers.unstack_layers(stacked)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(round_trip), jax.tree.leaves(params)))
