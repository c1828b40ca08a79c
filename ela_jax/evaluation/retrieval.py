"""Cross-modal retrieval metrics under the multi-caption protocol, computed in image chunks (no N x M matrix).

Image->text counts a hit when *any* of the image's captions ranks in the top K; text->image when the caption's image
does. Ties count against the model: a rank is the number of non-matching items scoring at least as high as the best
matching one, so a collapsed model (all scores equal) scores 0, not 100. "At least as high" allows a relative 1e-6: the same dot
product computed in matmuls of different shapes differs in its last bits, which must not turn a tie into a win.
A score may rank the two directions differently (FILIP's s_I and s_T): a ScoreFn then returns DirectionalScores.
Ranks can also come from a retriever's top-k lists (ranks_from_top_k), where ranks beyond k are censored.
Key spelling follows CLIP_benchmark: `text_retrieval_recall@K` is image->text (texts are retrieved),
`image_retrieval_recall@K` is text->image.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

import numpy as np

TIE_TOLERANCE = 1e-6


class DirectionalScores(NamedTuple):
    """A score whose two directions differ (FILIP): image->text ranks captions by `image_to_text`, text->image ranks
    images by `text_to_image`; both [rows, cols]."""

    image_to_text: np.ndarray
    text_to_image: np.ndarray


# (image rows, caption columns) -> scores [rows, cols], one matrix for both directions or DirectionalScores.
ScoreFn = Callable[[np.ndarray, np.ndarray], Union[np.ndarray, DirectionalScores]]


def directions(scores: np.ndarray | DirectionalScores) -> tuple[np.ndarray, np.ndarray]:
    """(image->text, text->image) float64 scores of a ScoreFn's result."""
    if isinstance(scores, DirectionalScores):
        return np.asarray(scores.image_to_text, np.float64), np.asarray(scores.text_to_image, np.float64)
    scores = np.asarray(scores, np.float64)
    return scores, scores


def retrieval_ranks(
    score_fn: ScoreFn, num_images: int, caption_image: np.ndarray, chunk_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks: image_ranks [num_images] (best of its captions), caption_ranks [num_captions]."""
    num_captions = len(caption_image)
    all_captions = np.arange(num_captions)
    # Score of each caption with its own image, the threshold for the text->image rank.
    positive = np.empty(num_captions, np.float64)
    for start in range(0, num_captions, chunk_size):
        block = all_captions[start : start + chunk_size]
        for image in np.unique(caption_image[block]):
            columns = block[caption_image[block] == image]
            positive[columns] = directions(score_fn(np.asarray([image]), columns))[1][0]
    image_ranks = np.empty(num_images, np.int64)
    caption_ranks = np.zeros(num_captions, np.int64)
    for start in range(0, num_images, chunk_size):
        rows = np.arange(start, min(start + chunk_size, num_images))
        image_to_text, text_to_image = directions(score_fn(rows, all_captions))  # [rows, captions]
        matches = caption_image[None, :] == rows[:, None]
        best_match = np.where(matches, image_to_text, -np.inf).max(axis=1)
        image_ranks[rows] = np.sum(~matches & (image_to_text >= tied_with(best_match)[:, None]), axis=1)
        caption_ranks += np.sum(~matches & (text_to_image >= tied_with(positive)[None, :]), axis=0)
    return image_ranks, caption_ranks


def tied_with(threshold: np.ndarray) -> np.ndarray:
    """The lowest score that still ties `threshold`."""
    return threshold - TIE_TOLERANCE * np.maximum(1.0, np.abs(threshold))


def ranks_from_top_k(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based ranks from a retriever's top-k lists: scores [q, k] (best first, -inf pads) and relevant [q, k] bool.

    A query's rank counts the non-relevant results scoring at least as high as its best relevant one (ties against
    the model, as in retrieval_ranks); a query with no relevant result in its list gets k, meaning "k or worse".
    """
    scores = np.asarray(scores, np.float64)
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    ranks = np.sum(~relevant & (scores >= tied_with(best)[:, None]), axis=1)
    return np.where(relevant.any(axis=1), ranks, scores.shape[1])


def recall_metrics(
    image_ranks: np.ndarray, caption_ranks: np.ndarray, ks=(1, 5, 10), censored_at: int | None = None
) -> dict[str, float | None]:
    """Recall in percent at each K both ways, RSUM, and mean/median 1-based ranks.

    `censored_at` = k says the ranks come from top-k lists, where k stands for "k or worse": the mean rank is then
    unknown (None), and the median is reported only when it lies inside the lists (else None).
    """
    if censored_at is not None and max(ks) > censored_at:
        raise ValueError(f"recall@{max(ks)} needs top-{max(ks)} lists, but the ranks come from top-{censored_at}")
    metrics: dict[str, float | None] = {}
    for k in ks:
        metrics[f"text_retrieval_recall@{k}"] = 100.0 * float(np.mean(image_ranks < k))
        metrics[f"image_retrieval_recall@{k}"] = 100.0 * float(np.mean(caption_ranks < k))
    metrics["rsum"] = sum(v for name, v in metrics.items() if "recall@" in name)
    for name, ranks in (("text_retrieval", image_ranks), ("image_retrieval", caption_ranks)):
        metrics[f"{name}_mean_rank"] = float(np.mean(ranks + 1)) if censored_at is None else None
        metrics[f"{name}_median_rank"] = _median_rank(ranks, censored_at)
    return metrics


def _median_rank(ranks: np.ndarray, censored_at: int | None) -> float | None:
    """1-based median; with censored ranks only when both middle values are real ranks (below the cut-off)."""
    if censored_at is not None and np.sort(ranks)[len(ranks) // 2] >= censored_at:
        return None
    return float(np.median(ranks + 1))


def dot_score_fn(image_vectors: np.ndarray, caption_vectors: np.ndarray) -> ScoreFn:
    return lambda rows, columns: image_vectors[rows] @ caption_vectors[columns].T


def cosine_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
