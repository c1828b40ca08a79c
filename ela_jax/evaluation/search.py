"""Ranks from an index instead of the score matrix: the evaluator's `eval.retriever` path.

Image->text indexes the captions and queries with the images; text->image indexes the images and queries with the
captions. Each query gets a top-k list (k = the largest recall K), so recall@K is exact for the exact retrievers,
and ranks beyond k are known only to be "k or worse" (see retrieval.recall_metrics' `censored_at`).
"""

from __future__ import annotations

import numpy as np

from ela_jax.evaluation import retrieval, scores
from ela_jax.retrieval import compressed, retrievers, sparse_vectors

# Which score each index serves: sparse indexes hold lexicon vectors, FAISS flat holds the dense global embeddings.
SERVED_SCORE = {"sparse_exact": "lexicon", "sparse_compressed": "lexicon", "seismic": "lexicon", "faiss": "global"}


def serves(retriever: str, score: str) -> bool:
    return SERVED_SCORE.get(retriever) == score


def _vectors(score: str, outputs: dict, eval_config):
    """What the index stores for `score`: dense global [n, d], or the scored lexicon vectors as CSR [n, V]."""
    if score == "global":
        return np.asarray(outputs["global"], np.float32)
    return sparse_vectors.sparsify(scores.lexicon_vectors(outputs, eval_config.lexicon_similarity))


def make_index(retriever: str, dim: int, seismic_options: dict | None = None) -> retrievers.Retriever:
    """An empty index; `seismic_options` (eval.seismic's keys) tune the Seismic index."""
    if retriever == "sparse_exact":
        return retrievers.ExactSparseIndex(dim)
    if retriever == "sparse_compressed":
        return compressed.CompressedSparseIndex(dim, weight_bits=8)
    if retriever == "seismic":
        return retrievers.SeismicIndex(dim, **(seismic_options or {}))
    if retriever == "faiss":
        return retrievers.FaissFlatIndex(dim)
    raise ValueError(f"unknown retriever {retriever!r}; use one of {sorted(SERVED_SCORE)}")


def top_k(
    retriever: str, documents, queries, k: int, chunk_size: int, seismic_options: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k], ids [q, k]) of each query's best documents, queries searched chunk_size at a time."""
    search_index = make_index(retriever, documents.shape[1], seismic_options)
    search_index.add(documents)
    results = [
        search_index.search(queries[start : start + chunk_size], k) for start in range(0, queries.shape[0], chunk_size)
    ]
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def index_ranks(
    retriever: str, score: str, image_out: dict, text_out: dict, caption_image: np.ndarray, k: int, eval_config
) -> tuple[np.ndarray, np.ndarray]:
    """0-based (image_ranks [images], caption_ranks [captions]) from top-k lists; k stands for "k or worse"."""
    image_vectors = _vectors(score, image_out, eval_config)
    caption_vectors = _vectors(score, text_out, eval_config)
    chunk_size, options = eval_config.batch_size, eval_config.seismic.to_dict()
    caption_scores, caption_ids = top_k(retriever, caption_vectors, image_vectors, k, chunk_size, options)  # per image
    image_scores, image_ids = top_k(retriever, image_vectors, caption_vectors, k, chunk_size, options)  # per caption
    images = np.arange(image_vectors.shape[0])
    caption_is_relevant = (caption_ids != retrievers.PAD_ID) & (caption_image[caption_ids] == images[:, None])
    image_is_relevant = image_ids == caption_image[:, None]
    image_ranks = retrieval.ranks_from_top_k(caption_scores, caption_is_relevant)
    caption_ranks = retrieval.ranks_from_top_k(image_scores, image_is_relevant)
    return image_ranks, caption_ranks
