"""Recall under the multi-caption protocol: hand-built score matrices with known ranks, and chunked == dense."""

from __future__ import annotations

import numpy as np
import pytest

from ela_jax.evaluation import retrieval
from tests.helpers import dense_ranks, random_protocol

# 3 images, 9 captions; image 1 has six captions and its only top-1 caption is the sixth (caption 6).
CAPTION_IMAGE = np.array([0, 1, 1, 1, 1, 1, 1, 2, 2])
SCORES = np.array(
    [
        # c0    c1    c2    c3    c4    c5    c6    c7    c8
        [0.50, 0.90, 0.10, 0.20, 0.30, 0.00, 0.60, 0.40, 0.05],  # image 0: c1, c6 beat its caption     -> rank 2
        [0.80, 0.20, 0.30, 0.10, 0.00, 0.40, 0.90, 0.65, 0.75],  # image 1: c6 beats every negative     -> rank 0
        [0.30, 0.40, 0.20, 0.10, 0.15, 0.05, 0.25, 0.40, 0.30],  # image 2: c1 ties its best caption c7  -> rank 1
    ]
)
IMAGE_RANKS = np.array([2, 0, 1])
# Column by column: other images scoring at least the caption's own image (ties count against the model).
CAPTION_RANKS = np.array([1, 2, 0, 2, 2, 0, 0, 2, 1])


def matrix_score_fn(scores: np.ndarray) -> retrieval.ScoreFn:
    return lambda rows, columns: scores[np.ix_(np.asarray(rows), np.asarray(columns))]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 256])
def test_hand_built_matrix_gives_the_hand_computed_ranks(chunk_size):
    image_ranks, caption_ranks = retrieval.retrieval_ranks(matrix_score_fn(SCORES), 3, CAPTION_IMAGE, chunk_size)
    np.testing.assert_array_equal(image_ranks, IMAGE_RANKS)
    np.testing.assert_array_equal(caption_ranks, CAPTION_RANKS)
    dense_image, dense_caption = dense_ranks(SCORES, CAPTION_IMAGE)
    np.testing.assert_array_equal(dense_image, IMAGE_RANKS)  # the reference agrees with the hand count
    np.testing.assert_array_equal(dense_caption, CAPTION_RANKS)


def test_image_to_text_hits_when_any_caption_is_in_the_top_k_even_the_sixth():
    # Image 1's first five captions score below every negative; only its sixth caption is on top.
    scores = SCORES.copy()
    scores[1, 1:6] = -1.0
    image_ranks, _ = retrieval.retrieval_ranks(matrix_score_fn(scores), 3, CAPTION_IMAGE, chunk_size=2)
    assert image_ranks[1] == 0
    scores[1, 6] = -1.0  # now every caption of image 1 is below all three negatives
    image_ranks, _ = retrieval.retrieval_ranks(matrix_score_fn(scores), 3, CAPTION_IMAGE, chunk_size=2)
    assert image_ranks[1] == 3


def test_recall_metrics_on_the_hand_built_matrix():
    image_ranks, caption_ranks = retrieval.retrieval_ranks(matrix_score_fn(SCORES), 3, CAPTION_IMAGE)
    metrics = retrieval.recall_metrics(image_ranks, caption_ranks, ks=(1, 2, 3))
    expected = {
        "text_retrieval_recall@1": 100.0 / 3,  # image ranks [2, 0, 1]
        "text_retrieval_recall@2": 200.0 / 3,
        "text_retrieval_recall@3": 100.0,
        "image_retrieval_recall@1": 300.0 / 9,  # caption ranks [1, 2, 0, 2, 2, 0, 0, 2, 1]
        "image_retrieval_recall@2": 500.0 / 9,
        "image_retrieval_recall@3": 100.0,
        "rsum": 100.0 * (1 / 3 + 2 / 3 + 1 + 3 / 9 + 5 / 9 + 1),
        "text_retrieval_mean_rank": 2.0,  # 1-based [3, 1, 2]
        "text_retrieval_median_rank": 2.0,
        "image_retrieval_mean_rank": 19.0 / 9,  # 1-based [2, 3, 1, 3, 3, 1, 1, 3, 2]
        "image_retrieval_median_rank": 2.0,
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_all_equal_scores_count_ties_against_the_model(chunk_size):
    vectors = np.ones((3, 4))
    score_fn = retrieval.dot_score_fn(vectors, np.ones((len(CAPTION_IMAGE), 4)))
    image_ranks, caption_ranks = retrieval.retrieval_ranks(score_fn, 3, CAPTION_IMAGE, chunk_size)
    np.testing.assert_array_equal(image_ranks, [9 - 1, 9 - 6, 9 - 2])  # every other image's caption ties
    np.testing.assert_array_equal(caption_ranks, np.full(9, 2))
    metrics = retrieval.recall_metrics(image_ranks, caption_ranks, ks=(1,))
    assert metrics["text_retrieval_recall@1"] == 0.0
    assert metrics["image_retrieval_recall@1"] == 0.0


@pytest.mark.parametrize("chunk_size", [16, 256])
def test_collapsed_float32_embeddings_score_zero_recall_whatever_the_chunk_size(chunk_size):
    # The evaluator's own path: float32 embeddings through dot_score_fn. A collapsed encoder maps everything to one
    # vector, so every score is the same dot product and must tie, whichever matmul shape computed it.
    num_images, captions_per_image = 100, 5
    caption_image = np.repeat(np.arange(num_images), captions_per_image)
    for seed in range(4):
        vector = retrieval.cosine_normalise(np.random.default_rng(seed).normal(size=(1, 256)).astype(np.float32))
        score_fn = retrieval.dot_score_fn(np.repeat(vector, num_images, 0), np.repeat(vector, len(caption_image), 0))
        image_ranks, caption_ranks = retrieval.retrieval_ranks(score_fn, num_images, caption_image, chunk_size)
        metrics = retrieval.recall_metrics(image_ranks, caption_ranks, ks=(1,))
        recalls = (metrics["text_retrieval_recall@1"], metrics["image_retrieval_recall@1"])
        assert recalls == (0.0, 0.0), f"collapsed vector {seed}: recall@1 (image->text, text->image) = {recalls}"
        np.testing.assert_array_equal(image_ranks, np.full(num_images, len(caption_image) - captions_per_image))
        np.testing.assert_array_equal(caption_ranks, np.full(len(caption_image), num_images - 1))


def test_key_names_put_image_to_text_under_text_retrieval():
    # Perfect image->text, hopeless text->image.
    metrics = retrieval.recall_metrics(np.zeros(4, np.int64), np.full(8, 20), ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert metrics[f"text_retrieval_recall@{k}"] == 100.0
        assert metrics[f"image_retrieval_recall@{k}"] == 0.0
    assert metrics["rsum"] == 300.0
    assert metrics["text_retrieval_mean_rank"] == 1.0
    assert metrics["image_retrieval_median_rank"] == 21.0


def test_rsum_is_the_sum_of_all_six_recalls_at_the_default_ks():
    rng = np.random.default_rng(0)
    image_ranks, caption_ranks = rng.integers(0, 15, size=10), rng.integers(0, 15, size=50)
    metrics = retrieval.recall_metrics(image_ranks, caption_ranks)
    recalls = [100.0 * np.mean(image_ranks < k) for k in (1, 5, 10)] + [
        100.0 * np.mean(caption_ranks < k) for k in (1, 5, 10)
    ]
    np.testing.assert_allclose(metrics["rsum"], sum(recalls), rtol=1e-12)
    np.testing.assert_allclose(metrics["text_retrieval_mean_rank"], np.mean(image_ranks) + 1, rtol=1e-12)
    np.testing.assert_allclose(metrics["image_retrieval_median_rank"], np.median(caption_ranks) + 1, rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1000])
def test_chunked_ranks_equal_dense_ranks_on_random_scores(chunk_size):
    rng, caption_image = random_protocol(1)
    scores = rng.normal(size=(13, 47))
    scores[np.arange(13), np.argmax(caption_image[None, :] == np.arange(13)[:, None], axis=1)] += 1.0  # some hits
    image_ranks, caption_ranks = retrieval.retrieval_ranks(matrix_score_fn(scores), 13, caption_image, chunk_size)
    dense_image, dense_caption = dense_ranks(scores, caption_image)
    np.testing.assert_array_equal(image_ranks, dense_image)
    np.testing.assert_array_equal(caption_ranks, dense_caption)
    assert 0 < np.mean(image_ranks == 0) < 1  # the case is neither trivial nor hopeless


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1000])
def test_chunked_ranks_equal_dense_ranks_with_coarse_scores_full_of_ties(chunk_size):
    rng, caption_image = random_protocol(2)
    scores = rng.integers(0, 3, size=(13, 47)).astype(np.float64)
    image_ranks, caption_ranks = retrieval.retrieval_ranks(matrix_score_fn(scores), 13, caption_image, chunk_size)
    dense_image, dense_caption = dense_ranks(scores, caption_image)
    np.testing.assert_array_equal(image_ranks, dense_image)
    np.testing.assert_array_equal(caption_ranks, dense_caption)


@pytest.mark.parametrize("chunk_size", [2, 1000])
def test_dot_score_fn_on_cosine_normalised_vectors_ranks_like_the_dense_cosine_matrix(chunk_size):
    rng, caption_image = random_protocol(3)
    image_vectors = retrieval.cosine_normalise(rng.normal(size=(13, 6)))
    caption_vectors = retrieval.cosine_normalise(rng.normal(size=(47, 6)))
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=-1), 1.0, rtol=1e-12)
    cosine = np.array([[np.dot(image_vectors[i], caption_vectors[c]) for c in range(47)] for i in range(13)])
    score_fn = retrieval.dot_score_fn(image_vectors, caption_vectors)
    image_ranks, caption_ranks = retrieval.retrieval_ranks(score_fn, 13, caption_image, chunk_size)
    dense_image, dense_caption = dense_ranks(cosine, caption_image)
    np.testing.assert_array_equal(image_ranks, dense_image)
    np.testing.assert_array_equal(caption_ranks, dense_caption)


def test_cosine_normalise_leaves_a_zero_vector_at_zero():
    normalised = retrieval.cosine_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(normalised, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-12)


def test_retrieval_ranks_never_asks_for_more_than_chunk_size_images_at_once():
    requested = []

    def score_fn(rows, columns):
        requested.append(len(rows))
        return matrix_score_fn(SCORES)(rows, columns)

    retrieval.retrieval_ranks(score_fn, 3, CAPTION_IMAGE, chunk_size=2)
    assert max(requested) <= 2
