"""Lexicon vectors -> JSONL `{"id": int, "vector": {wordpiece: weight}}` for documents (images) and queries
(captions), laid out as Anserini reads them: documents alone in documents/ (JsonVectorCollection indexes every file of
its input folder), queries in queries/ keyed by `qid` (its JsonIntVector topic reader), TREC qrels, an id map,
optional pruning and integer quantisation (JsonVectorCollection reads weights as integers), and stats.json.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
from scipy import sparse

DOCUMENTS_FILE = os.path.join("documents", "documents.jsonl")
QUERIES_FILE = os.path.join("queries", "queries.jsonl")
QRELS_FILE = "qrels.txt"
ID_MAP_FILE = "id_map.json"
STATS_FILE = "stats.json"


# The --quantize scale to use for Anserini: lexicon weights lie around 0-3, and impacts of weight x 100 keep two
# decimals (the scale Anserini's own learned-sparse regressions use).
ANSERINI_SCALE = 100.0


log = logging.getLogger(__name__)


def sparsify(lexicon: np.ndarray, top_k: int | None = None, threshold: float = 0.0) -> sparse.csr_matrix:
    """lexicon [N, V] -> float32 CSR [N, V] keeping, per row, the weights above `threshold` and of those the `top_k`
    largest (ties go to the lower vocabulary id, so the result does not depend on the sort)."""
    lexicon = np.asarray(lexicon)
    if lexicon.ndim != 2:
        raise ValueError(f"lexicon must be [num_vectors, vocab_size], got shape {lexicon.shape}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    # In row chunks: a dense copy of a whole caption set's [N, 30522] lexicon would double its gigabytes.
    vectors = sparse.vstack(
        [
            sparse.csr_matrix(np.where(chunk > threshold, chunk, 0.0), dtype=np.float32)
            for chunk in np.array_split(lexicon, max(1, -(-len(lexicon) // 4096)))
        ],
        format="csr",
    )
    vectors.sort_indices()
    if top_k is None:
        return vectors
    keep = np.zeros(vectors.nnz, bool)
    for row in range(vectors.shape[0]):
        start, end = vectors.indptr[row], vectors.indptr[row + 1]
        # lexsort's last key is primary: weight descending, then vocabulary id ascending.
        order = np.lexsort((vectors.indices[start:end], -vectors.data[start:end]))
        keep[start + order[:top_k]] = True
    return _keep_entries(vectors, keep)


def quantize(vectors: sparse.csr_matrix, scale: float) -> sparse.csr_matrix:
    """Integer impacts round(weight * scale) as int32 CSR (Anserini indexes integer term weights). Entries that round
    to 0 are dropped: an impact of 0 is no posting."""
    if scale <= 0:
        raise ValueError(f"quantize scale must be positive, got {scale}")
    impacts = np.rint(vectors.data.astype(np.float64) * scale)
    if impacts.size and impacts.max() > np.iinfo(np.int32).max:
        raise ValueError(
            f"quantize scale {scale} turns weight {vectors.data.max()} into {impacts.max():.0f}, "
            "beyond int32; use a smaller scale"
        )
    quantized = sparse.csr_matrix((impacts.astype(np.int32), vectors.indices, vectors.indptr), shape=vectors.shape)
    return _keep_entries(quantized, quantized.data != 0)


def _keep_entries(vectors: sparse.csr_matrix, keep: np.ndarray) -> sparse.csr_matrix:
    """The CSR matrix with only the stored entries where `keep` [nnz] is True (rows stay, possibly empty)."""
    row_of_entry = np.repeat(np.arange(vectors.shape[0]), np.diff(vectors.indptr))
    counts = np.bincount(row_of_entry[keep], minlength=vectors.shape[0])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(vectors.indptr.dtype)
    return sparse.csr_matrix((vectors.data[keep], vectors.indices[keep], indptr), shape=vectors.shape)


def _json_weight(value) -> int | float:
    """Integers stay integers; a float32 is written in its shortest decimal form, which parses back to itself."""
    if np.issubdtype(type(value), np.integer):
        return int(value)
    return float(str(np.float32(value)))


def write_jsonl(
    path: str,
    vectors: sparse.csr_matrix,
    vocabulary: Sequence[str],
    ids: Sequence[int] | None = None,
    id_key: str = "id",
):
    """One line `{id_key: id, "vector": {wordpiece: weight}}` per row of `vectors` [N, V]; an empty row is `{}`."""
    ids = range(vectors.shape[0]) if ids is None else ids
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        for row, vector_id in enumerate(ids):
            start, end = vectors.indptr[row], vectors.indptr[row + 1]
            vector = {
                vocabulary[term]: _json_weight(weight)
                for term, weight in zip(vectors.indices[start:end], vectors.data[start:end])
            }
            f.write(json.dumps({id_key: int(vector_id), "vector": vector}) + "\n")


def read_jsonl(path: str, vocabulary: Sequence[str]) -> tuple[np.ndarray, sparse.csr_matrix]:
    """The inverse of write_jsonl (documents' `id` or queries' `qid`): ids int64 [N] and vectors CSR [N, V] (int32
    when every weight is an integer)."""
    token_ids = {token: index for index, token in enumerate(vocabulary)}
    ids, indptr, indices, weights = [], [0], [], []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            record = json.loads(line)
            ids.append(record["id"] if "id" in record else record["qid"])
            for token, weight in record["vector"].items():
                if token not in token_ids:
                    raise KeyError(
                        f"{path}:{line_number}: word {token!r} is not in the vocabulary; read the file with "
                        "the vocabulary it was exported with"
                    )
                indices.append(token_ids[token])
                weights.append(weight)
            indptr.append(len(indices))
    integer = all(isinstance(w, int) for w in weights) and bool(weights)
    data = np.asarray(weights, np.int32 if integer else np.float32)
    vectors = sparse.csr_matrix(
        (data, np.asarray(indices, np.int32), np.asarray(indptr, np.int64)), shape=(len(ids), len(vocabulary))
    )
    vectors.sort_indices()
    return np.asarray(ids, np.int64), vectors


def vector_stats(vectors: sparse.csr_matrix) -> dict:
    """count, avg/min/max non-zeros per vector, empty vectors, and the fraction of vocabulary ids used at least once."""
    nonzeros = np.diff(vectors.indptr)
    used = np.unique(vectors.indices[vectors.data != 0])
    return {
        "count": int(vectors.shape[0]),
        "avg_nonzeros": float(nonzeros.mean()) if len(nonzeros) else 0.0,
        "min_nonzeros": int(nonzeros.min()) if len(nonzeros) else 0,
        "max_nonzeros": int(nonzeros.max()) if len(nonzeros) else 0,
        "empty": int(np.sum(nonzeros == 0)),
        "vocabulary_coverage": float(len(used) / vectors.shape[1]),
    }


def retrieval_id_map(split: str, keys: Sequence[str], captions: Sequence[str], caption_image: Sequence[int]) -> dict:
    """id_map.json of an exported split: document id -> the image's key in its source (a folder's file path, COCO's
    image id, Flickr30K's photo id); query id -> caption text and the id and key of its image."""
    return {
        "split": split,
        "documents": [{"id": i, "key": key} for i, key in enumerate(keys)],
        "queries": [
            {"id": c, "caption": caption, "image_id": int(image), "image_key": keys[int(image)]}
            for c, (caption, image) in enumerate(zip(captions, caption_image))
        ],
    }


def export_vectors(
    output_dir: str,
    documents: sparse.csr_matrix,
    queries: sparse.csr_matrix,
    vocabulary: Sequence[str],
    id_map: dict,
    settings: dict,
    relevant: Sequence[int] = (),
) -> dict:
    """Writes documents/documents.jsonl, queries/queries.jsonl, qrels.txt (query i's relevant document is
    `relevant[i]`), id_map.json and stats.json into `output_dir`; returns the stats."""
    if documents.shape[1] != len(vocabulary) or queries.shape[1] != len(vocabulary):
        raise ValueError(
            f"vectors have {documents.shape[1]} (documents) and {queries.shape[1]} (queries) dimensions "
            f"but the vocabulary has {len(vocabulary)} words; export with the model's own tokenizer"
        )
    os.makedirs(output_dir, exist_ok=True)
    write_jsonl(os.path.join(output_dir, DOCUMENTS_FILE), documents, vocabulary)
    write_jsonl(os.path.join(output_dir, QUERIES_FILE), queries, vocabulary, id_key="qid")
    with open(os.path.join(output_dir, QRELS_FILE), "w") as f:
        f.writelines(f"{query} 0 {document} 1\n" for query, document in enumerate(relevant))  # TREC: qid iter doc rel
    with open(os.path.join(output_dir, ID_MAP_FILE), "w") as f:
        json.dump(id_map, f, indent=1)
    both = sparse.vstack([documents, queries]).tocsr()
    stats = {
        "vocabulary_size": len(vocabulary),
        "documents": vector_stats(documents),
        "queries": vector_stats(queries),
        "vocabulary_coverage": vector_stats(both)["vocabulary_coverage"],
        "settings": settings,
    }
    with open(os.path.join(output_dir, STATS_FILE), "w") as f:
        json.dump(stats, f, indent=1)
    return stats


def prune_and_quantize(
    lexicon: np.ndarray, top_k: int | None, threshold: float, quantize_scale: float | None
) -> sparse.csr_matrix:
    vectors = sparsify(lexicon, top_k, threshold)
    return vectors if quantize_scale is None else quantize(vectors, quantize_scale)
