"""MLM's cross-entropy over the vocabulary in chunks equals the plain one over the dense logits, in values and
gradients: on small arrays against numpy, and through the tiny model's MLM head against the dense-logit path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ela_jax import objectives
from ela_jax.models import lexicon
from ela_jax.models.ela import ELAModel
from tests.helpers import model_inputs, tiny_model

VOCAB, PADDED, MASKED = 37, 40, (0, 3)


def cross_entropy_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(3, 5, 8)).astype(np.float32)
    kernel = rng.normal(size=(8, PADDED)).astype(np.float32)
    bias = rng.normal(size=(PADDED,)).astype(np.float32)
    labels = rng.integers(0, VOCAB, size=(3, 5)).astype(np.int32)
    labels[0, 0] = MASKED[1]  # a special token's label: its logit is the masked one
    return features, kernel, bias, labels


def numpy_cross_entropy(features, kernel, bias, labels) -> np.ndarray:
    logits = (features.astype(np.float64) @ kernel + bias)[..., :VOCAB]
    logits[..., list(MASKED)] = lexicon.MASKED_LOGIT
    shift = logits.max(-1, keepdims=True)
    log_normaliser = np.log(np.exp(logits - shift).sum(-1)) + shift[..., 0]
    return log_normaliser - np.take_along_axis(logits, labels[..., None], -1)[..., 0]


def dense_cross_entropy(features, kernel, bias, labels) -> jax.Array:
    logits = lexicon.mask_words((features @ kernel + bias)[..., :VOCAB], MASKED)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# 13 leaves the last strided chunk short: padded words.
@pytest.mark.parametrize(
    "chunk", [0, 13, pytest.param(8, marks=pytest.mark.slow), pytest.param(PADDED, marks=pytest.mark.slow)]
)
def test_chunked_vocab_cross_entropy_equals_numpy_and_the_dense_gradient(chunk):
    features, kernel, bias, labels = cross_entropy_inputs()
    weights = jnp.asarray(np.random.default_rng(1).normal(size=labels.shape), jnp.float32)

    def chunked(features, kernel, bias):
        losses = lexicon.vocab_cross_entropy(features, kernel, bias, labels, VOCAB, MASKED, chunk)
        return jnp.sum(weights * losses), losses

    def dense(features, kernel, bias):
        return jnp.sum(weights * dense_cross_entropy(features, kernel, bias, labels))

    (_, losses), grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2), has_aux=True))(features, kernel, bias)
    np.testing.assert_allclose(losses, numpy_cross_entropy(features, kernel, bias, labels), rtol=1e-5, atol=1e-5)
    expected_grads = jax.grad(dense, argnums=(0, 1, 2))(features, kernel, bias)
    for name, want, got in zip(("features", "kernel", "bias"), expected_grads, grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.all(np.asarray(grads[1])[:, VOCAB:] == 0) and np.all(np.asarray(grads[2])[VOCAB:] == 0)


# The tiny model's gradient both ways compiles for tens of seconds: the default run has the arrays' test above and
# tests/test_text_stream.py (the step's MLM value against the dense logits).
@pytest.mark.parametrize("chunk, tied", [(7, True), (0, True), (7, False)])
@pytest.mark.slow
@pytest.mark.integration
def test_model_mlm_losses_equal_the_dense_logit_path_in_values_and_gradients(chunk, tied):
    model = tiny_model(vocab_multiple=16, chunk=chunk, tied=tied).clone(special_ids=(0, 2))
    images, tokens, mask = model_inputs()
    params = jax.jit(model.init)(jax.random.key(0), images, tokens, mask)["params"]
    labels = np.roll(tokens, 1, axis=1)
    labels[0, 1] = 2  # a special word as a label
    selected = jnp.asarray(np.random.default_rng(2).random(tokens.shape) < 0.5)

    def chunked(params):
        losses = model.apply({"params": params}, tokens, mask, labels, method=ELAModel.mlm_token_losses)
        return jnp.sum(losses * selected)

    def dense(params):  # the path the step took before: the dense logits of every position
        logits = model.apply({"params": params}, tokens, mask, method=ELAModel.mlm_logits)
        return jnp.sum(objectives.mlm_token_losses(logits, labels, selected))

    value, grads = jax.jit(jax.value_and_grad(chunked))(params)
    want_value, want_grads = jax.jit(jax.value_and_grad(dense))(params)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    # Gradients of order 0.1-1: summing the logsumexp in another order moves the smallest entries by ~1e-7.
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6), grads, want_grads)
