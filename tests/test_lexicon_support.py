"""Which words a lexicon holds: the terms that decide its support (what an inverted index serves), each against a
numpy reference, and the two ways the plain objective could not train it (shift-invariant soft_ce, raw FLOPS under a
cosine loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ela_jax import objectives

VOCAB = 12
target_presence = jax.jit(objectives.target_presence)
ela_soft_ce = jax.jit(objectives.ela_soft_ce)
ela_bce = jax.jit(objectives.ela_bce)
flops_regulariser = jax.jit(objectives.flops_regulariser, static_argnames="normalised")
expansion_distribution = jax.jit(objectives.expansion_distribution, static_argnames=("tau_q", "form", "source_top_k"))


def stuck_target():
    """One image whose only target word (id 3) sits below the lexicon's ReLU, every other logit far below it."""
    logits = np.full((1, VOCAB), -20.0, np.float32)
    logits[0, 3] = -1.0
    targets = np.zeros((1, VOCAB), np.float32)
    targets[0, 3] = 1.0
    return jnp.asarray(logits), jnp.asarray(targets)


def test_soft_ce_cannot_lift_a_top_ranked_target_word_into_the_lexicon():
    logits, targets = stuck_target()
    gradient = jax.grad(ela_soft_ce)(logits, targets, 1.0)
    assert abs(float(gradient[0, 3])) < 1e-6, "already ranked first: soft_ce is satisfied below zero"
    shift = jax.grad(lambda c: ela_soft_ce(logits + c, targets, 1.0))(0.0)
    assert abs(float(shift)) < 1e-6, "a constant added to every logit changes nothing"


def test_target_presence_lifts_a_stuck_target_word_and_only_it():
    logits, targets = stuck_target()
    margin = 1.0
    gradient = np.asarray(jax.grad(target_presence)(logits, targets, margin))
    expected = -1.0 / (1.0 + np.exp(-(margin - (-1.0))))  # d softplus(m - z) / dz = -sigmoid(m - z)
    np.testing.assert_allclose(gradient[0, 3], expected, rtol=1e-5)
    np.testing.assert_array_equal(np.delete(gradient[0], 3), 0.0)


def test_target_presence_is_the_target_weighted_softplus_shortfall():
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.normal(size=(4, VOCAB)).astype(np.float32)
    targets = rng.dirichlet(np.ones(VOCAB), size=4).astype(np.float32)
    margin = 0.5
    expected = np.mean(
        [sum(targets[b, v] * np.log1p(np.exp(margin - float(logits[b, v]))) for v in range(VOCAB)) for b in range(4)]
    )
    np.testing.assert_allclose(target_presence(jnp.asarray(logits), jnp.asarray(targets), margin), expected, rtol=1e-5)


def expanded_word_logit_after_descent(threshold: float, steps: int = 400) -> float:
    """The logit of an expanded word (label 0.2 beside a caption word's 1.0) after gradient descent on BCE alone."""
    targets = np.zeros((1, VOCAB), np.float32)
    targets[0, 0], targets[0, 3] = 1.0, 0.2
    logits = jnp.full((1, VOCAB), -1.0)
    grad = jax.jit(jax.grad(ela_bce))
    for _ in range(steps):
        logits = logits - 2.0 * grad(logits, jnp.asarray(targets), 1.0, threshold)
    return float(logits[0, 3])


def test_bce_threshold_lifts_an_expanded_word_into_the_lexicon_where_plain_bce_keeps_it_out():
    # Its optimum is logit(0.2) - logit(threshold): above zero when the threshold is below the label.
    lifted = expanded_word_logit_after_descent(0.05)
    np.testing.assert_allclose(lifted, np.log(0.2 / 0.8) - np.log(0.05 / 0.95), atol=1e-2)
    assert lifted > 0
    assert expanded_word_logit_after_descent(0.5) < 0, "plain BCE: a label below 0.5 stays out of the lexicon"


def test_bce_with_a_threshold_is_bce_on_logits_offset_by_its_log_odds():
    rng = np.random.default_rng(3)
    logits = 3.0 * rng.normal(size=(4, VOCAB)).astype(np.float32)
    targets = rng.dirichlet(np.ones(VOCAB), size=4).astype(np.float32)
    threshold, tau_p = 0.1, 0.5
    expected = []
    for b in range(4):
        labels = targets[b] / targets[b].max()
        probability = 1.0 / (
            1.0 + np.exp(-(logits[b].astype(np.float64) / tau_p + np.log(threshold / (1 - threshold))))
        )
        per_word = -(labels * np.log(probability) + (1 - labels) * np.log(1 - probability))
        expected.append(per_word.sum() / max(labels.sum(), 1.0))
    actual = ela_bce(jnp.asarray(logits), jnp.asarray(targets), tau_p, threshold)
    np.testing.assert_allclose(actual, np.mean(expected), rtol=1e-5)


def test_normalised_flops_ignores_scale_and_raw_flops_grows_with_its_square():
    lexicon = jnp.asarray(np.maximum(np.random.default_rng(1).normal(size=(6, VOCAB)), 0.0).astype(np.float32))
    np.testing.assert_allclose(flops_regulariser(2.0 * lexicon), 4.0 * flops_regulariser(lexicon), rtol=1e-6)
    normalised = flops_regulariser(lexicon, normalised=True)
    np.testing.assert_allclose(flops_regulariser(2.0 * lexicon, normalised=True), normalised, rtol=1e-6)
    rows = np.asarray(lexicon) / np.linalg.norm(np.asarray(lexicon), axis=-1, keepdims=True)
    np.testing.assert_allclose(normalised, np.sum(np.mean(rows, axis=0) ** 2), rtol=1e-5)


@pytest.mark.parametrize("form", ["sparse", "softmax"])
def test_source_top_k_expands_from_the_strongest_content_words_only(form):
    rng = np.random.default_rng(2)
    content = np.ones(VOCAB, np.int32)
    content[[0, 1]] = 0  # non-content words never count toward k, however strong
    text_lexicon = rng.uniform(0.1, 1.0, size=(3, VOCAB)).astype(np.float32)
    text_lexicon[:, 0] = 10.0
    k = 4
    expansion = np.asarray(expansion_distribution(jnp.asarray(text_lexicon), jnp.asarray(content), 0.5, form, k))
    for row, weights in zip(expansion, text_lexicon):
        strongest = np.argsort(-np.where(content > 0, weights, -np.inf))[:k]
        assert set(np.flatnonzero(row)) == set(strongest)
        np.testing.assert_allclose(row.sum(), 1.0, rtol=1e-6)
    uncut = np.asarray(expansion_distribution(jnp.asarray(text_lexicon), jnp.asarray(content), 0.5, form, 0))
    assert (np.count_nonzero(uncut, axis=-1) == VOCAB - 2).all()
