"""Retrieval scores of encoded images and captions as chunked ScoreFns: `global`, `lexicon`, `fine` (FILIP) and
`hybrid` (a weighted sum). None of them forms more than one [rows, cols] block (and, for `fine`, one
[micro-batch, cols, patches, tokens] similarity block) at a time.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from ela_jax import objectives
from ela_jax.evaluation import retrieval

HYBRID_PARTS = ("global", "lexicon", "fine")
FINE_OUTPUTS = ("token_embeddings", "token_mask")


def lexicon_vectors(outputs: dict, similarity: str) -> np.ndarray:
    """The lexicon vectors as scored: cosine-normalised for `cosine`, as they are for `dot`."""
    if similarity == "cosine":
        return retrieval.cosine_normalise(outputs["lexicon"])
    return outputs["lexicon"]


def needs_token_embeddings(scores, hybrid_weights) -> bool:
    """Whether scoring `scores` uses the FILIP token embeddings (costly to keep: [N, tokens, token_dim])."""
    return "fine" in scores or ("hybrid" in scores and hybrid_weights["fine"] > 0)


def score_function(score: str, image_out: dict, text_out: dict, eval_config) -> retrieval.ScoreFn:
    """The chunked ScoreFn of `score` over images (rows) and captions (columns)."""
    if score == "global":
        return retrieval.dot_score_fn(image_out["global"], text_out["global"])
    if score == "lexicon":
        similarity = eval_config.lexicon_similarity
        return retrieval.dot_score_fn(lexicon_vectors(image_out, similarity), lexicon_vectors(text_out, similarity))
    if score == "fine":
        return FineScorer(
            image_out["token_embeddings"],
            image_out["token_mask"],
            text_out["token_embeddings"],
            text_out["token_mask"],
            eval_config.batch_size,
        )
    if score == "hybrid":
        weights = {part: float(eval_config.hybrid_weights[part]) for part in HYBRID_PARTS}
        parts = {part: score_function(part, image_out, text_out, eval_config) for part, w in weights.items() if w > 0}
        num_images, num_captions = len(image_out["global"]), len(text_out["global"])
        return HybridScorer(
            parts, weights, eval_config.hybrid_normalise, num_images, num_captions, eval_config.batch_size
        )
    raise ValueError(f"unknown score {score!r}")


@functools.partial(jax.jit, static_argnames="micro_batch")
def _fine_block(image_tokens, image_mask, text_tokens, text_mask, micro_batch: int):
    """FILIP s_image, s_text [rows, cols] of image_tokens [rows, P, d] (rows a multiple of micro_batch) against
    text_tokens [cols, L, d]; images go through objectives.filip_similarities micro_batch at a time, so the
    similarity tensor held at once is [micro_batch, cols, P, L]."""
    rows, patches, dim = image_tokens.shape
    steps = rows // micro_batch

    def one_step(args):
        tokens, mask = args
        return objectives.filip_similarities(tokens, text_tokens, mask, text_mask)

    s_image, s_text = jax.lax.map(
        one_step,
        (image_tokens.reshape(steps, micro_batch, patches, dim), image_mask.reshape(steps, micro_batch, patches)),
    )
    return s_image.reshape(rows, -1), s_text.reshape(rows, -1)


def _bucket(size: int, smallest: int, largest: int) -> int:
    """The padded size for `size` items: smallest * 2^j, at most `largest` (itself a multiple of smallest), so a
    handful of shapes compile however the rows and columns are cut."""
    bucket = smallest
    while bucket < size and bucket < largest:
        bucket *= 2
    return min(bucket, largest)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """array [n, ...] -> [rows, ...] with zero rows appended (a zero mask row marks them as no tokens)."""
    return np.concatenate([array, np.zeros((rows - len(array), *array.shape[1:]), array.dtype)])


class FineScorer:
    """FILIP late interaction as a ScoreFn: image->text ranks captions by s_image = mean over patches of the best
    word, text->image ranks images by s_text = mean over words of the best patch, as FILIP's loss pairs them (each
    direction's softmax in `objectives.filip_loss` uses its own similarity). Pads and CLS are excluded by the masks.

    Columns are scored `chunk_size` at a time and rows `micro_batch` images at a time inside one jitted call.
    """

    def __init__(self, image_tokens, image_mask, text_tokens, text_mask, chunk_size: int, micro_batch: int = 8):
        self.image_tokens, self.image_mask = np.asarray(image_tokens, np.float32), np.asarray(image_mask, bool)
        self.text_tokens, self.text_mask = np.asarray(text_tokens, np.float32), np.asarray(text_mask, bool)
        self.micro_batch = micro_batch
        self.chunk_size = -(-chunk_size // micro_batch) * micro_batch

    def __call__(self, rows: np.ndarray, columns: np.ndarray) -> retrieval.DirectionalScores:
        rows, columns = np.asarray(rows), np.asarray(columns)
        s_image = np.empty((len(rows), len(columns)), np.float32)
        s_text = np.empty_like(s_image)
        for row_start in range(0, len(rows), self.chunk_size):
            row_block = rows[row_start : row_start + self.chunk_size]
            padded_rows = _bucket(len(row_block), self.micro_batch, self.chunk_size)
            images = _pad_rows(self.image_tokens[row_block], padded_rows)
            image_mask = _pad_rows(self.image_mask[row_block], padded_rows)
            for column_start in range(0, len(columns), self.chunk_size):
                column_block = columns[column_start : column_start + self.chunk_size]
                padded_columns = _bucket(len(column_block), self.micro_batch, self.chunk_size)
                block_image, block_text = _fine_block(
                    images,
                    image_mask,
                    _pad_rows(self.text_tokens[column_block], padded_columns),
                    _pad_rows(self.text_mask[column_block], padded_columns),
                    micro_batch=self.micro_batch,
                )
                target = (
                    slice(row_start, row_start + len(row_block)),
                    slice(column_start, column_start + len(column_block)),
                )
                s_image[target] = np.asarray(block_image)[: len(row_block), : len(column_block)]
                s_text[target] = np.asarray(block_text)[: len(row_block), : len(column_block)]
        return retrieval.DirectionalScores(s_image, s_text)


def score_scale(score_fn: retrieval.ScoreFn, num_rows: int, num_columns: int, sample_size: int) -> tuple[float, float]:
    """Standard deviation of each direction's scores over a fixed sample (up to sample_size evenly spaced rows x
    columns); 1.0 where a score is constant, so a collapsed score adds nothing instead of dividing by zero."""
    rows = np.unique(np.linspace(0, num_rows - 1, min(num_rows, sample_size)).astype(np.int64))
    columns = np.unique(np.linspace(0, num_columns - 1, min(num_columns, sample_size)).astype(np.int64))
    return tuple(float(np.std(s)) or 1.0 for s in retrieval.directions(score_fn(rows, columns)))


class HybridScorer:
    """sum_s w_s * score_s / scale_s, per direction. With normalise="std", scale_s is the score's standard deviation
    over a fixed sample of pairs: the scores live on different scales (a cosine in [-1, 1], FILIP's mean of maxima,
    an unbounded lexicon dot product), so raw weights would mostly measure those scales. Dividing a whole score
    matrix by one positive number keeps that score's own ranking, so the weights say how much each score's spread
    counts. normalise="none" sums the raw scores."""

    def __init__(
        self,
        parts: dict[str, retrieval.ScoreFn],
        weights: dict[str, float],
        normalise: str,
        num_rows: int,
        num_columns: int,
        sample_size: int,
    ):
        self.parts = parts
        self.scaled_weights = {}
        for name, score_fn in parts.items():
            scales = score_scale(score_fn, num_rows, num_columns, sample_size) if normalise == "std" else (1.0, 1.0)
            self.scaled_weights[name] = (weights[name] / scales[0], weights[name] / scales[1])

    def __call__(self, rows: np.ndarray, columns: np.ndarray) -> retrieval.DirectionalScores:
        image_to_text = text_to_image = 0.0
        for name, score_fn in self.parts.items():
            part_image_to_text, part_text_to_image = retrieval.directions(score_fn(rows, columns))
            image_weight, text_weight = self.scaled_weights[name]
            image_to_text = image_to_text + image_weight * part_image_to_text
            text_to_image = text_to_image + text_weight * part_text_to_image
        return retrieval.DirectionalScores(image_to_text, text_to_image)
