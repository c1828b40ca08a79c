"""Cross-modal retrieval metrics under the multi-caption protocol, computed in image chunks (no N x M matrix).

Image->text counts a hit when *any* of the image's captions ranks in the top K; text->image when the caption's image
does. Ties count against the model: a rank is the number of non-matching items scoring at least as high as the best
matching one, so a collapsed model (all scores equal) scores 0, not 100. "At least as high" allows a relative 1e-6: the same dot
product computed in matmuls of different shapes differs in its last bits, which must not turn a tie into a win.
Key spelling follows open_clip / CLIP_benchmark: `text_retrieval_recall@K` is image->text (texts are retrieved),
`image_retrieval_recall@K` is text->image.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

TIE_TOLERANCE = 1e-6

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (image rows, caption columns) -> scores [rows, cols]


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
            positive[columns] = score_fn(np.asarray([image]), columns)[0]
    image_ranks = np.empty(num_images, np.int64)
    caption_ranks = np.zeros(num_captions, np.int64)
    for start in range(0, num_images, chunk_size):
        rows = np.arange(start, min(start + chunk_size, num_images))
        scores = np.asarray(score_fn(rows, all_captions), np.float64)  # [rows, captions]
        matches = caption_image[None, :] == rows[:, None]
        best_match = np.where(matches, scores, -np.inf).max(axis=1)
        image_ranks[rows] = np.sum(~matches & (scores >= _tied_with(best_match)[:, None]), axis=1)
        caption_ranks += np.sum(~matches & (scores >= _tied_with(positive)[None, :]), axis=0)
    return image_ranks, caption_ranks


def _tied_with(threshold: np.ndarray) -> np.ndarray:
    """The lowest score that still ties `threshold`."""
    return threshold - TIE_TOLERANCE * np.maximum(1.0, np.abs(threshold))


def recall_metrics(image_ranks: np.ndarray, caption_ranks: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall in percent at each K both ways, RSUM, and mean/median 1-based ranks."""
    metrics = {}
    for k in ks:
        metrics[f"text_retrieval_recall@{k}"] = 100.0 * float(np.mean(image_ranks < k))
        metrics[f"image_retrieval_recall@{k}"] = 100.0 * float(np.mean(caption_ranks < k))
    metrics["rsum"] = sum(v for name, v in metrics.items() if "recall@" in name)
    for name, ranks in (("text_retrieval", image_ranks), ("image_retrieval", caption_ranks)):
        metrics[f"{name}_mean_rank"] = float(np.mean(ranks + 1))
        metrics[f"{name}_median_rank"] = float(np.median(ranks + 1))
    return metrics


def dot_score_fn(image_vectors: np.ndarray, caption_vectors: np.ndarray) -> ScoreFn:
    return lambda rows, columns: image_vectors[rows] @ caption_vectors[columns].T


def cosine_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
