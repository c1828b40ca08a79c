"""Every term of the ELA objective (and the lexicon pooling) against an independent numpy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ela_jax import objectives
from ela_jax.models import lexicon

RTOL, ATOL = 1e-5, 1e-6

# Jitted once per shape, as the train step uses them; also far faster than dispatching each op eagerly.
symmetric_info_nce = jax.jit(objectives.symmetric_info_nce)
global_contrastive_loss = jax.jit(objectives.global_contrastive_loss)
filip_similarities = jax.jit(objectives.filip_similarities)
filip_loss = jax.jit(objectives.filip_loss)
caption_bag_of_words = jax.jit(objectives.caption_bag_of_words)
expanded_targets = jax.jit(objectives.expanded_targets, static_argnames=("tau_q", "top_k", "form"))
pool_tokens = jax.jit(lexicon.pool_tokens, static_argnames="how")
ela_soft_ce = jax.jit(objectives.ela_soft_ce)
ela_bce = jax.jit(objectives.ela_bce)
ela_lex_contrastive = jax.jit(objectives.ela_lex_contrastive)
lexlip_cosine_loss = jax.jit(objectives.lexlip_cosine_loss)
flops_regulariser = jax.jit(objectives.flops_regulariser)
quadratic_warmup = jax.jit(objectives.quadratic_warmup, static_argnames="warmup_steps")
linear_warmup = jax.jit(objectives.linear_warmup, static_argnames="warmup_steps")
mlm_corrupt = jax.jit(objectives.mlm_corrupt, static_argnames=("mask_token_id", "vocab_size"))
mlm_loss = jax.jit(objectives.mlm_loss)
# The model's lexicon vector: saturated max-pool of the token logits.
pool_lexicon = jax.jit(lambda logits, mask: lexicon.saturate(lexicon.pool_tokens(logits, mask, "max")))
saturate = jax.jit(lexicon.saturate)


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def log_softmax(values: np.ndarray) -> np.ndarray:
    """Log-softmax of a 1-D float64 vector."""
    values = np.asarray(values, np.float64)
    shifted = values - values.max()
    return shifted - np.log(np.sum(np.exp(shifted)))


def cross_entropy(logits_row: np.ndarray, label: int) -> float:
    return -log_softmax(logits_row)[label]


def info_nce_reference(logits: np.ndarray) -> float:
    """Row i's positive is column i and column j's positive is row j; the mean of both directions."""
    size = logits.shape[0]
    rows = [cross_entropy(logits[i, :], i) for i in range(size)]
    columns = [cross_entropy(logits[:, j], j) for j in range(size)]
    return 0.5 * (np.mean(rows) + np.mean(columns))


def unit_rows(values: np.ndarray) -> np.ndarray:
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------- global


def test_symmetric_info_nce_averages_row_and_column_cross_entropy():
    logits = 3.0 * np.random.default_rng(0).normal(size=(5, 5)).astype(np.float32)
    assert_close(symmetric_info_nce(jnp.asarray(logits)), info_nce_reference(logits))


def test_symmetric_info_nce_is_log_batch_for_uninformative_logits():
    assert_close(symmetric_info_nce(jnp.zeros((6, 6))), np.log(6.0))


def test_symmetric_info_nce_is_invariant_to_transposing_the_logits():
    # Both directions carry equal weight, so swapping which side is the row leaves the loss unchanged.
    logits = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    assert_close(symmetric_info_nce(jnp.asarray(logits)), symmetric_info_nce(jnp.asarray(logits.T)))


def test_global_contrastive_loss_is_info_nce_on_scaled_dot_products():
    rng = np.random.default_rng(2)
    image = unit_rows(rng.normal(size=(4, 8))).astype(np.float32)
    text = unit_rows(rng.normal(size=(4, 8))).astype(np.float32)
    scale = 12.5
    logits = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            logits[i, j] = scale * sum(float(image[i, d]) * float(text[j, d]) for d in range(8))
    actual = global_contrastive_loss(jnp.asarray(image), jnp.asarray(text), jnp.asarray(scale))
    assert_close(actual, info_nce_reference(logits))


# ------------------------------------------------------------------------------------------------------------ FILIP


def filip_reference(image_tokens, text_tokens, image_mask, text_mask):
    """s_image[i, j] = mean over real k of max over real r; s_text[i, j] = mean over real r of max over real k."""
    num_images, num_texts = image_tokens.shape[0], text_tokens.shape[0]
    s_image = np.zeros((num_images, num_texts))
    s_text = np.zeros((num_images, num_texts))
    for i in range(num_images):
        patches = [k for k in range(image_tokens.shape[1]) if image_mask[i, k]]
        for j in range(num_texts):
            words = [r for r in range(text_tokens.shape[1]) if text_mask[j, r]]
            dot = {
                (k, r): float(np.dot(image_tokens[i, k].astype(np.float64), text_tokens[j, r].astype(np.float64)))
                for k in patches
                for r in words
            }
            s_image[i, j] = np.mean([max(dot[k, r] for r in words) for k in patches])
            s_text[i, j] = np.mean([max(dot[k, r] for k in patches) for r in words])
    return s_image, s_text


def filip_inputs(seed: int, num_images: int = 3, num_texts: int = 4):
    rng = np.random.default_rng(seed)
    image_tokens = unit_rows(rng.normal(size=(num_images, 5, 8))).astype(np.float32)
    text_tokens = unit_rows(rng.normal(size=(num_texts, 6, 8))).astype(np.float32)
    image_mask = np.ones((num_images, 5), bool)
    image_mask[0, 3:] = False
    image_mask[-1, 1] = False
    text_lengths = [6, 2, 4, 1, 3][:num_texts]
    text_mask = np.arange(6)[None, :] < np.asarray(text_lengths)[:, None]
    # Padded positions hold huge vectors: they would win every max and dominate every mean if not excluded.
    image_tokens[~image_mask] = 100.0 * rng.normal(size=(int((~image_mask).sum()), 8))
    text_tokens[~text_mask] = 100.0 * rng.normal(size=(int((~text_mask).sum()), 8))
    return image_tokens, text_tokens, image_mask, text_mask


def test_filip_similarities_match_token_loops_and_exclude_pads_from_max_and_mean():
    image_tokens, text_tokens, image_mask, text_mask = filip_inputs(3)
    s_image, s_text = filip_similarities(*map(jnp.asarray, (image_tokens, text_tokens, image_mask, text_mask)))
    expected_image, expected_text = filip_reference(image_tokens, text_tokens, image_mask, text_mask)
    assert s_image.shape == (3, 4) and s_text.shape == (3, 4)
    assert_close(s_image, expected_image)
    assert_close(s_text, expected_text)


def test_filip_similarities_ignore_whatever_the_padded_positions_hold():
    image_tokens, text_tokens, image_mask, text_mask = filip_inputs(4)
    first = filip_similarities(*map(jnp.asarray, (image_tokens, text_tokens, image_mask, text_mask)))
    image_tokens[~image_mask] = -image_tokens[~image_mask]
    text_tokens[~text_mask] = 0.0
    second = filip_similarities(*map(jnp.asarray, (image_tokens, text_tokens, image_mask, text_mask)))
    for before, after in zip(first, second):
        assert_close(before, after)


def test_filip_loss_uses_s_image_for_image_rows_and_s_text_for_text_rows():
    rng = np.random.default_rng(5)
    s_image = rng.uniform(-1, 1, size=(4, 4)).astype(np.float32)
    s_text = rng.uniform(-1, 1, size=(4, 4)).astype(np.float32)
    scale = 7.0
    image_to_text = [cross_entropy(scale * s_image[i, :], i) for i in range(4)]
    text_to_image = [cross_entropy(scale * s_text[:, j], j) for j in range(4)]
    expected = 0.5 * (np.mean(image_to_text) + np.mean(text_to_image))
    actual = filip_loss(jnp.asarray(s_image), jnp.asarray(s_text), jnp.asarray(scale))
    assert_close(actual, expected)
    swapped = filip_loss(jnp.asarray(s_text), jnp.asarray(s_image), jnp.asarray(scale))
    assert abs(float(swapped) - expected) > 1e-3  # the two matrices are not interchangeable


# ------------------------------------------------------------------------------------------------------ ELA targets

VOCAB = 12
PAD, CLS, SEP, THE = 0, 1, 2, 3  # THE plays a stopword


def content_vocab() -> np.ndarray:
    content = np.ones(VOCAB, np.float32)
    content[[PAD, CLS, SEP, THE]] = 0.0
    return content


def bag_of_words_reference(token_ids, token_mask, content):
    bags = np.zeros((token_ids.shape[0], content.shape[0]), np.float32)
    for b in range(token_ids.shape[0]):
        for position in range(token_ids.shape[1]):
            word = token_ids[b, position]
            if token_mask[b, position] and content[word] > 0:
                bags[b, word] = 1.0
    return bags


def test_caption_bag_of_words_drops_specials_stopwords_pads_and_counts_duplicates_once():
    token_ids = np.array(
        [
            [CLS, 5, THE, 5, 7, SEP, PAD, PAD],
            [CLS, THE, SEP, 9, 9, 9, 9, 9],  # the 9s sit under the pad mask: not words of the caption
            [CLS, 4, 4, 4, 11, 10, 6, SEP],
        ],
        np.int32,
    )
    token_mask = np.array(
        [
            [1, 1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1],
        ],
        bool,
    )
    content = content_vocab()
    bags = np.asarray(caption_bag_of_words(jnp.asarray(token_ids), jnp.asarray(token_mask), jnp.asarray(content)))
    expected = np.zeros((3, VOCAB), np.float32)
    expected[0, [5, 7]] = 1.0
    expected[2, [4, 6, 10, 11]] = 1.0
    np.testing.assert_array_equal(bags, expected)
    np.testing.assert_array_equal(bags, bag_of_words_reference(token_ids, token_mask, content))


def test_caption_bag_of_words_matches_loops_on_random_captions():
    rng = np.random.default_rng(6)
    token_ids = rng.integers(0, VOCAB, size=(8, 10)).astype(np.int32)
    token_mask = np.arange(10)[None, :] < rng.integers(1, 11, size=(8, 1))
    content = content_vocab()
    bags = caption_bag_of_words(jnp.asarray(token_ids), jnp.asarray(token_mask), jnp.asarray(content))
    np.testing.assert_array_equal(np.asarray(bags), bag_of_words_reference(token_ids, token_mask, content))


def expanded_targets_reference(bags, text_lexicon, content, beta, tau_q, top_k, form="softmax"):
    targets = np.zeros(bags.shape, np.float64)
    for b in range(bags.shape[0]):
        words = [v for v in range(bags.shape[1]) if bags[b, v] > 0]
        content_words = [v for v in range(bags.shape[1]) if content[v] > 0]
        explicit = np.zeros(bags.shape[1])
        for v in words:
            explicit[v] = 1.0 / len(words)
        expansion = np.zeros(bags.shape[1])
        if form == "softmax":
            largest = max(text_lexicon[b, v] / tau_q for v in content_words)
            for v in content_words:
                expansion[v] = np.exp(text_lexicon[b, v] / tau_q - largest)
        else:  # sparse: proportional to a_T on the content words the text side activated
            for v in content_words:
                expansion[v] = max(float(text_lexicon[b, v]), 0.0)
        if expansion.sum() > 0:
            expansion /= expansion.sum()
        row = (1.0 - beta) * explicit + beta * expansion
        if top_k:
            keep = np.argsort(-row, kind="stable")[:top_k]  # ties: the lower word id first
            kept = np.zeros_like(row)
            kept[keep] = row[keep]
            row = kept
        if row.sum() > 0:
            row = row / row.sum()
        targets[b] = row
    return targets


def random_target_inputs(seed: int):
    rng = np.random.default_rng(seed)
    content = content_vocab()
    bags = (rng.uniform(size=(5, VOCAB)) < 0.4).astype(np.float32) * content
    bags[1] = 0.0
    bags[1, 8] = 1.0  # a single-word caption
    text_lexicon = np.maximum(rng.normal(size=(5, VOCAB)), 0.0).astype(np.float32) * 2.0
    return bags, text_lexicon, content


def call_expanded_targets(bags, text_lexicon, content, beta, tau_q, top_k, form="softmax"):
    return np.asarray(
        expanded_targets(jnp.asarray(bags), jnp.asarray(text_lexicon), jnp.asarray(content), beta, tau_q, top_k, form)
    )


def test_expanded_targets_without_expansion_are_uniform_over_caption_words():
    bags = np.zeros((2, VOCAB), np.float32)
    bags[0, [4, 5, 9]] = 1.0
    bags[1, 7] = 1.0
    text_lexicon = np.random.default_rng(7).normal(size=(2, VOCAB)).astype(np.float32)
    targets = call_expanded_targets(bags, text_lexicon, content_vocab(), 0.0, 0.5, 0)
    expected = np.zeros((2, VOCAB))
    expected[0, [4, 5, 9]] = 1.0 / 3.0
    expected[1, 7] = 1.0
    assert_close(targets, expected)


@pytest.mark.parametrize("beta, tau_q", [(0.3, 0.5), (1.0, 2.0), (0.7, 0.1)])
def test_expanded_targets_mix_a_content_only_softmax_at_tau_q(beta, tau_q):
    bags, text_lexicon, content = random_target_inputs(8)
    targets = call_expanded_targets(bags, text_lexicon, content, beta, tau_q, 0)
    assert_close(targets, expanded_targets_reference(bags, text_lexicon, content, beta, tau_q, 0))
    assert_close(targets.sum(-1), np.ones(5))
    assert np.all(targets[:, content == 0] == 0.0), "special tokens and stopwords must get no target mass"


def test_expanded_targets_give_no_mass_to_non_content_words_even_when_their_lexicon_weight_is_huge():
    bags, text_lexicon, content = random_target_inputs(9)
    text_lexicon[:, [CLS, THE]] = 1e4
    targets = call_expanded_targets(bags, text_lexicon, content, 0.5, 1.0, 0)
    assert np.all(targets[:, content == 0] == 0.0)
    assert_close(targets, expanded_targets_reference(bags, text_lexicon, content, 0.5, 1.0, 0))


@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_expanded_targets_top_k_keeps_the_k_largest_and_renormalises(top_k):
    bags, text_lexicon, content = random_target_inputs(10)
    text_lexicon += np.random.default_rng(11).uniform(0, 0.01, size=text_lexicon.shape).astype(np.float32)  # no ties
    targets = call_expanded_targets(bags, text_lexicon, content, 0.4, 0.5, top_k)
    assert_close(targets, expanded_targets_reference(bags, text_lexicon, content, 0.4, 0.5, top_k))
    np.testing.assert_array_equal((targets > 0).sum(-1), np.full(5, top_k))
    assert_close(targets.sum(-1), np.ones(5))


def test_expanded_targets_top_k_keeps_exactly_k_when_the_tail_is_tied():
    """A BERT-sized vocabulary where only 40 words have a_T > 0: every other content word gets the same softmax mass,
    and that tied tail must not survive the top-k cut (ties go to the lower word id)."""
    vocab, top_k = 30522, 64
    rng = np.random.default_rng(16)
    content = np.ones(vocab, np.float32)
    content[:1000] = 0.0  # specials and unused ids
    bags = np.zeros((2, vocab), np.float32)
    bags[:, [2000, 3000, 4000]] = 1.0
    text_lexicon = np.zeros((2, vocab), np.float32)
    for row in range(2):
        text_lexicon[row, rng.choice(np.arange(1000, vocab), 40, replace=False)] = rng.uniform(0.1, 0.6, 40)
    targets = call_expanded_targets(bags, text_lexicon, content, 0.3, 0.1, top_k)
    np.testing.assert_array_equal((targets > 0).sum(-1), [top_k, top_k])
    reference = np.stack(
        [
            expanded_targets_reference(bags[r : r + 1], text_lexicon[r : r + 1], content, 0.3, 0.1, top_k)[0]
            for r in (0, 1)
        ]
    )
    assert_close(targets, reference)


@pytest.mark.parametrize("beta, top_k", [(0.3, 0), (1.0, 0), (0.6, 4)])
def test_sparse_expanded_targets_are_proportional_to_a_T_on_active_content_words(beta, top_k):
    bags, text_lexicon, content = random_target_inputs(17)
    text_lexicon += np.random.default_rng(18).uniform(0, 0.01, size=text_lexicon.shape).astype(np.float32)
    text_lexicon[:, [5, 6]] = 0.0
    bags[:, [5, 6]] = 0.0
    targets = call_expanded_targets(bags, text_lexicon, content, beta, 0.1, top_k, "sparse")
    assert_close(targets, expanded_targets_reference(bags, text_lexicon, content, beta, 0.1, top_k, "sparse"))
    assert np.all(targets[:, [5, 6]] == 0.0), "no mass on words neither named nor activated"
    assert np.all(targets[:, content == 0] == 0.0)
    assert_close(targets.sum(-1), np.ones(5))


def test_sparse_expanded_targets_of_an_all_zero_lexicon_are_the_explicit_words():
    bags, _, content = random_target_inputs(19)
    text_lexicon = np.zeros(bags.shape, np.float32)
    text_lexicon[:, THE] = 5.0  # a stopword's weight is not a content word's
    targets = call_expanded_targets(bags, text_lexicon, content, 0.7, 0.1, 0, "sparse")
    assert_close(targets, call_expanded_targets(bags, text_lexicon, content, 0.0, 0.1, 0))


def test_expanded_targets_top_k_at_least_vocab_keeps_everything():
    bags, text_lexicon, content = random_target_inputs(12)
    kept = call_expanded_targets(bags, text_lexicon, content, 0.4, 0.5, VOCAB)
    assert_close(kept, call_expanded_targets(bags, text_lexicon, content, 0.4, 0.5, 0))


def test_expanded_targets_for_a_caption_without_content_words():
    bags, text_lexicon, content = random_target_inputs(13)
    bags[2] = 0.0
    without_expansion = call_expanded_targets(bags, text_lexicon, content, 0.0, 0.5, 0)
    np.testing.assert_array_equal(without_expansion[2], np.zeros(VOCAB))
    with_expansion = call_expanded_targets(bags, text_lexicon, content, 0.6, 0.5, 0)
    reference = expanded_targets_reference(bags, text_lexicon, content, 1.0, 0.5, 0)  # only the softmax remains
    assert_close(with_expansion[2], reference[2])


def test_expanded_targets_pass_no_gradient_into_the_text_lexicon():
    bags, text_lexicon, content = random_target_inputs(14)
    weights = jnp.asarray(np.random.default_rng(15).normal(size=bags.shape).astype(np.float32))

    def weighted_targets(lexicon_weights):
        targets = objectives.expanded_targets(jnp.asarray(bags), lexicon_weights, jnp.asarray(content), 0.5, 0.5, 0)
        return jnp.sum(weights * targets)

    # The targets do depend on a_T, so a zero gradient is the stop-gradient and not a constant function.
    value = jax.jit(weighted_targets)
    assert abs(float(value(jnp.asarray(text_lexicon))) - float(value(jnp.zeros(bags.shape)))) > 1e-3
    gradient = jax.jit(jax.grad(weighted_targets))(jnp.asarray(text_lexicon))
    np.testing.assert_array_equal(np.asarray(gradient), np.zeros_like(text_lexicon))


# -------------------------------------------------------------------------------------------------- ELA loss forms


@pytest.mark.parametrize("how", ["max", "mean", "logsumexp"])
def test_pool_tokens_matches_per_word_loops_over_real_tokens(how):
    patch_logits = 3.0 * np.random.default_rng(16).normal(size=(2, 5, 7)).astype(np.float32)
    token_mask = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 0, 1]], bool)
    expected = np.zeros((2, 7))
    for b in range(2):
        for v in range(7):
            column = patch_logits[b, token_mask[b], v].astype(np.float64)
            if how == "max":
                expected[b, v] = max(column)
            elif how == "mean":
                expected[b, v] = sum(column) / len(column)
            else:
                expected[b, v] = np.log(sum(np.exp(z) for z in column) / len(column))
    assert_close(pool_tokens(jnp.asarray(patch_logits), jnp.asarray(token_mask), how), expected)


def test_pool_tokens_rejects_an_unknown_pooling():
    with pytest.raises(ValueError, match="median"):
        lexicon.pool_tokens(jnp.zeros((1, 2, 3)), jnp.ones((1, 2), bool), "median")


def ela_inputs(seed: int):
    rng = np.random.default_rng(seed)
    image_vocab_logits = 2.0 * rng.normal(size=(4, VOCAB)).astype(np.float32)
    bags, text_lexicon, content = random_target_inputs(seed + 1)
    targets = expanded_targets_reference(bags, text_lexicon, content, 0.3, 0.5, 0).astype(np.float32)
    return image_vocab_logits, targets[:4]


def test_ela_soft_ce_is_target_weighted_negative_log_softmax_at_tau_p():
    image_vocab_logits, targets = ela_inputs(17)
    tau_p = 0.7
    per_image = []
    for b in range(4):
        log_probs = log_softmax(image_vocab_logits[b] / tau_p)
        per_image.append(-sum(targets[b, v] * log_probs[v] for v in range(VOCAB)))
    actual = ela_soft_ce(jnp.asarray(image_vocab_logits), jnp.asarray(targets), tau_p)
    assert_close(actual, np.mean(per_image))


def test_ela_bce_is_multi_label_bce_against_max_scaled_targets_over_positive_mass():
    image_vocab_logits, targets = ela_inputs(18)
    targets[3] = 0.0  # a caption with no target contributes zero
    tau_p = 0.5
    per_image = []
    for b in range(4):
        peak = max(targets[b].max(), 1e-12)
        total, positive_mass = 0.0, 0.0
        for v in range(VOCAB):
            label = targets[b, v] / peak
            probability = 1.0 / (1.0 + np.exp(-float(image_vocab_logits[b, v]) / tau_p))
            total += -(label * np.log(probability) + (1.0 - label) * np.log(1.0 - probability))
            positive_mass += label
        per_image.append(total / max(positive_mass, 1.0))
    actual = ela_bce(jnp.asarray(image_vocab_logits), jnp.asarray(targets), tau_p)
    assert_close(actual, np.mean(per_image))


def test_ela_lex_contrastive_is_info_nce_on_target_weighted_saturated_logits():
    image_vocab_logits, targets = ela_inputs(19)
    tau = 0.1
    similarity = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            similarity[i, j] = sum(
                targets[j, v] * np.log1p(max(float(image_vocab_logits[i, v]), 0.0)) for v in range(VOCAB)
            )
    actual = ela_lex_contrastive(jnp.asarray(image_vocab_logits), jnp.asarray(targets), tau)
    assert_close(actual, info_nce_reference(similarity / tau))


def test_lexlip_cosine_loss_is_info_nce_on_lexicon_cosines():
    rng = np.random.default_rng(20)
    image_lexicon = np.maximum(rng.normal(size=(4, VOCAB)), 0.0).astype(np.float32)
    text_lexicon = np.maximum(rng.normal(size=(4, VOCAB)), 0.0).astype(np.float32)
    tau = 0.05
    cosine = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            a, t = image_lexicon[i].astype(np.float64), text_lexicon[j].astype(np.float64)
            cosine[i, j] = np.dot(a, t) / (np.sqrt(np.dot(a, a)) * np.sqrt(np.dot(t, t)))
    actual = lexlip_cosine_loss(jnp.asarray(image_lexicon), jnp.asarray(text_lexicon), tau)
    assert_close(actual, info_nce_reference(cosine / tau), rtol=1e-4)


def test_flops_regulariser_sums_squared_batch_mean_absolute_weights():
    lexicon_weights = np.random.default_rng(21).normal(size=(6, VOCAB)).astype(np.float32)
    expected = 0.0
    for v in range(VOCAB):
        expected += (sum(abs(float(lexicon_weights[b, v])) for b in range(6)) / 6) ** 2
    assert_close(flops_regulariser(jnp.asarray(lexicon_weights)), expected)


# --------------------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "step, expected", [(0, 0.0), (25, 0.002 * 0.0625), (50, 0.002 * 0.25), (100, 0.002), (400, 0.002)]
)
def test_quadratic_warmup_grows_as_the_square_of_progress_then_holds(step, expected):
    assert_close(quadratic_warmup(0.002, jnp.asarray(step), 100), expected)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (25, 0.125), (50, 0.25), (100, 0.5), (400, 0.5)])
def test_linear_warmup_grows_linearly_then_holds(step, expected):
    assert_close(linear_warmup(0.5, jnp.asarray(step), 100), expected)


def test_warmups_without_warmup_steps_return_the_full_value_from_step_zero():
    assert_close(quadratic_warmup(0.002, jnp.asarray(0), 0), 0.002)
    assert_close(linear_warmup(0.5, jnp.asarray(0), 0), 0.5)


# --------------------------------------------------------------------------------------------------------------- MLM

MLM_VOCAB, MASK_ID, MLM_PROBABILITY = 1000, 3, 0.3


def mlm_batch():
    rng = np.random.default_rng(22)
    token_ids = rng.integers(10, MLM_VOCAB, size=(256, 128)).astype(np.int32)  # never the mask id
    maskable = rng.uniform(size=token_ids.shape) < 0.7
    return jnp.asarray(token_ids), jnp.asarray(maskable)


def corrupt(key, token_ids, maskable):
    return mlm_corrupt(key, token_ids, maskable, MLM_PROBABILITY, MASK_ID, MLM_VOCAB)


def test_mlm_corrupt_selects_the_probability_of_maskable_tokens_and_nothing_else():
    token_ids, maskable = mlm_batch()
    corrupted, selected = map(np.asarray, corrupt(jax.random.key(0), token_ids, maskable))
    token_ids, maskable = np.asarray(token_ids), np.asarray(maskable)
    assert not np.any(selected & ~maskable), "a non-maskable token (pad or special) was selected"
    np.testing.assert_array_equal(corrupted[~selected], token_ids[~selected])
    assert abs(selected[maskable].mean() - MLM_PROBABILITY) < 0.01  # ~23k maskable: std ~0.003


def test_mlm_corrupt_splits_selected_tokens_80_10_10():
    token_ids, maskable = mlm_batch()
    corrupted, selected = map(np.asarray, corrupt(jax.random.key(1), token_ids, maskable))
    original, replaced = np.asarray(token_ids)[selected], corrupted[selected]  # ~7k selected: std ~0.005
    masked = replaced == MASK_ID
    kept = replaced == original
    randomised = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.02
    assert abs(kept.mean() - 0.1) < 0.02
    assert abs(randomised.mean() - 0.1) < 0.02
    assert np.all((replaced >= 0) & (replaced < MLM_VOCAB))
    assert len(np.unique(replaced[randomised])) > 0.5 * randomised.sum(), "random replacements should be spread"


def test_mlm_corrupt_is_deterministic_for_a_key_and_varies_across_keys():
    token_ids, maskable = mlm_batch()
    first = corrupt(jax.random.key(2), token_ids, maskable)
    again = corrupt(jax.random.key(2), token_ids, maskable)
    other = corrupt(jax.random.key(3), token_ids, maskable)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(first[1]), np.asarray(other[1]))


def test_mlm_loss_is_mean_cross_entropy_over_selected_positions():
    rng = np.random.default_rng(23)
    vocab_logits = 2.0 * rng.normal(size=(2, 5, 7)).astype(np.float32)
    token_ids = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
    selected = np.array([[1, 0, 1, 0, 0], [0, 0, 1, 1, 1]], bool)
    losses = [
        cross_entropy(vocab_logits[b, position], token_ids[b, position])
        for b in range(2)
        for position in range(5)
        if selected[b, position]
    ]
    actual = mlm_loss(jnp.asarray(vocab_logits), jnp.asarray(token_ids), jnp.asarray(selected))
    assert_close(actual, np.mean(losses))


def test_mlm_loss_is_zero_when_nothing_is_selected():
    vocab_logits = jnp.asarray(np.random.default_rng(24).normal(size=(2, 5, 7)).astype(np.float32))
    loss = mlm_loss(vocab_logits, jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 5), bool))
    assert float(loss) == 0.0


# ------------------------------------------------------------------------------------------------- lexicon pooling


def pool_lexicon_reference(logits, token_mask):
    pooled = np.zeros((logits.shape[0], logits.shape[2]))
    for b in range(logits.shape[0]):
        for v in range(logits.shape[2]):
            real = [max(float(logits[b, k, v]), 0.0) for k in range(logits.shape[1]) if token_mask[b, k]]
            pooled[b, v] = np.log1p(max(real, default=0.0))
    return pooled


def test_pool_lexicon_is_log1p_of_the_max_relu_over_real_tokens():
    rng = np.random.default_rng(25)
    logits = 2.0 * rng.normal(size=(3, 6, 9)).astype(np.float32)
    token_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    pooled = np.asarray(pool_lexicon(jnp.asarray(logits), jnp.asarray(token_mask)))
    assert_close(pooled, pool_lexicon_reference(logits, token_mask))
    np.testing.assert_array_equal(pooled[2], np.zeros(9))  # an all-pad row is the empty lexicon


def test_pool_lexicon_ignores_huge_logits_at_padded_positions():
    rng = np.random.default_rng(26)
    logits = rng.normal(size=(2, 6, 9)).astype(np.float32)
    token_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
    clean = np.asarray(pool_lexicon(jnp.asarray(logits), jnp.asarray(token_mask)))
    logits[~token_mask] = 1e6
    polluted = np.asarray(pool_lexicon(jnp.asarray(logits), jnp.asarray(token_mask)))
    np.testing.assert_array_equal(polluted, clean)
    assert_close(polluted, pool_lexicon_reference(logits, token_mask))


def test_saturate_is_log1p_of_relu():
    logits = np.array([[-5.0, -1e-3, 0.0, 1e-3, 0.5, 3.0, 1e4]], np.float32)
    expected = [[np.log1p(max(float(z), 0.0)) for z in logits[0]]]
    assert_close(saturate(jnp.asarray(logits)), expected)


@pytest.mark.parametrize("chunk", [3, 1024])  # 3 leaves a padded last chunk of columns
def test_sparse_lex_contrastive_logits_equal_the_dense_ones_on_top_k_targets(chunk):
    rng = np.random.default_rng(31)
    vocab_logits = jnp.asarray(rng.normal(size=(5, 20)), jnp.float32)
    targets = objectives.keep_top_k(jnp.asarray(rng.dirichlet(np.ones(20), 7), jnp.float32), 4)
    targets = targets / targets.sum(-1, keepdims=True)
    values, ids = jax.lax.top_k(targets, 4)

    def sparse(z):
        return objectives.sparse_lex_contrastive_logits(z, values, ids, 0.5, chunk)

    def dense(z):
        return objectives.lex_contrastive_logits(z, targets, 0.5)

    np.testing.assert_allclose(jax.jit(sparse)(vocab_logits), dense(vocab_logits), rtol=1e-6, atol=1e-7)
    weights = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    grad = lambda f: jax.grad(lambda z: jnp.sum(weights * f(z)))(vocab_logits)  # noqa: E731
    np.testing.assert_allclose(grad(sparse), grad(dense), rtol=1e-6, atol=1e-7)
