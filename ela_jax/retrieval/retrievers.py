"""Inner-product retrievers behind one interface: an exact sparse inverted index (CSR postings), a dense FAISS flat
baseline and an approximate Seismic index (pyseismic-lsr), each reporting its index memory."""

from __future__ import annotations

import abc
import os
import re
import sys
import tempfile

import numpy as np
from scipy import sparse

PAD_ID = -1  # fills result rows when the index holds fewer than k documents (FAISS's convention)


class Retriever(abc.ABC):
    """Top-k inner-product search over an append-only collection; a document's id is its position in `add` order."""

    @abc.abstractmethod
    def add(self, vectors) -> None:
        """Appends documents [n, dim] (dense array, or a scipy sparse matrix for the sparse retrievers)."""

    @abc.abstractmethod
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [q, dim] -> (scores [q, k] best first, ids int64 [q, k]); missing results are PAD_ID / -inf."""

    @property
    @abc.abstractmethod
    def num_documents(self) -> int: ...

    @property
    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """Bytes of the index structures a search reads (not the Python objects around them)."""


def as_sparse_rows(vectors, vocab_size: int) -> sparse.csr_matrix:
    """Dense or sparse [n, vocab_size] -> float32 CSR without duplicates or explicit zeros, indices sorted."""
    if vectors.ndim != 2 or vectors.shape[1] != vocab_size:
        raise ValueError(f"sparse vectors must be [n, {vocab_size}] (the index's vocabulary size), got {vectors.shape}")
    rows = sparse.csr_matrix(vectors, dtype=np.float32, copy=True)
    rows.sum_duplicates()
    rows.eliminate_zeros()
    return rows


def _padded(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - len(ids)
    return (
        np.concatenate([scores, np.full(missing, -np.inf, scores.dtype)]),
        np.concatenate([ids.astype(np.int64), np.full(missing, PAD_ID, np.int64)]),
    )


class ExactSparseIndex(Retriever):
    """Term -> postings (document ids and weights) in one CSR matrix [vocab, documents]. A query gathers the postings
    of its terms and accumulates scores for the documents they touch only; the result is exactly the brute-force
    top-k of the dot product, ties going to the lower id, with float64 scores. Weights must be non-negative, as
    lexicon vectors (log(1 + ReLU)) and their integer quantisations are."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._postings = sparse.csr_matrix((vocab_size, 0), dtype=np.float32)  # [vocab, documents]

    @property
    def num_documents(self) -> int:
        return self._postings.shape[1]

    @property
    def memory_bytes(self) -> int:
        return int(self._postings.indptr.nbytes + self._postings.indices.nbytes + self._postings.data.nbytes)

    def add(self, vectors) -> None:
        new_postings = non_negative_rows(vectors, self.vocab_size, "document").T.tocsr()  # [vocab, new]
        if self.num_documents:
            new_postings = sparse.hstack([self._postings, new_postings], format="csr")
        new_postings.sort_indices()
        self._postings = new_postings

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = non_negative_rows(queries, self.vocab_size, "query")
        scores = np.empty((queries.shape[0], k), np.float64)
        ids = np.empty((queries.shape[0], k), np.int64)
        for row in range(queries.shape[0]):
            start, end = queries.indptr[row], queries.indptr[row + 1]
            scores[row], ids[row] = self._search_one(queries.indices[start:end], queries.data[start:end], k)
        return scores, ids

    def _search_one(self, terms: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """terms int [t], weights float32 [t] -> (scores [k], ids [k])."""
        # [1, vocab] @ [vocab, documents] in float32: scipy reads only the query terms' posting lists and accumulates
        # over the documents they touch (no pass over all documents, no copy of the lists). float64 would first
        # copy the whole index to float64.
        query = sparse.csr_matrix((weights, terms, [0, len(terms)]), shape=(1, self.vocab_size))
        touched = query @ self._postings
        candidates, approximate = touched.indices, touched.data
        if len(candidates) > k:
            # A float32 sum of t non-negative products is within a relative t * eps of the exact sum, so every
            # document of the exact top k scores at least this in float32; those few are re-scored in float64.
            slack = 2 * len(terms) * float(np.finfo(np.float32).eps)
            kth_best = float(np.partition(approximate, len(candidates) - k)[len(candidates) - k])
            candidates = candidates[approximate >= kth_best * (1 - slack) / (1 + slack)]
        candidate_scores = _exact_scores(self._postings, terms, weights, candidates)
        candidates = candidates.astype(np.int64)
        # Untouched documents score exactly 0, below every touched one; with fewer than k touched documents the
        # lowest untouched ids complete the result (ties go to the lower id).
        if len(candidates) < k:
            untouched = np.setdiff1d(np.arange(min(self.num_documents, k + len(candidates))), candidates)
            candidates = np.concatenate([candidates, untouched[: k - len(candidates)]])
            candidate_scores = np.concatenate([candidate_scores, np.zeros(len(candidates) - len(candidate_scores))])
        order = np.lexsort((candidates, -candidate_scores))[:k]  # score descending, then id ascending
        return _padded(candidate_scores[order], candidates[order], k)


def non_negative_rows(vectors, vocab_size: int, what: str) -> sparse.csr_matrix:
    """as_sparse_rows, refusing negative weights: the inverted indexes score non-negative lexicon weights only."""
    rows = as_sparse_rows(vectors, vocab_size)
    if rows.nnz and rows.data.min() < 0:
        raise ValueError(
            f"a {what} vector has weight {rows.data.min()}; the sparse indexes score non-negative "
            "lexicon weights only (log(1 + ReLU) or its quantisation)"
        )
    return rows


def _exact_scores(
    postings: sparse.csr_matrix, terms: np.ndarray, weights: np.ndarray, documents: np.ndarray
) -> np.ndarray:
    """float64 dot products of a query (weights [t] on terms [t]) with `documents` [c]: each of the terms' posting
    lists (rows of postings [vocab, documents], ids sorted) is binary-searched for the documents."""
    scores = np.zeros(len(documents), np.float64)
    for term, weight in zip(terms, weights.astype(np.float64)):
        start, end = postings.indptr[term], postings.indptr[term + 1]
        if start == end:
            continue
        listed = postings.indices[start:end]
        # Same dtype on both sides, or numpy converts the whole posting list for every search.
        position = np.minimum(np.searchsorted(listed, documents.astype(listed.dtype)), end - start - 1)
        found = listed[position] == documents
        scores[found] += weight * postings.data[start:end][position[found]]
    return scores


class FaissFlatIndex(Retriever):
    """Dense exhaustive inner product (faiss.IndexFlatIP): the float32 [documents, dim] matrix is the index.
    Thread count follows faiss.omp_set_num_threads."""

    def __init__(self, dim: int):
        import faiss

        self.dim = dim
        self._index = faiss.IndexFlatIP(dim)

    @property
    def num_documents(self) -> int:
        return int(self._index.ntotal)

    @property
    def memory_bytes(self) -> int:
        return int(self._index.ntotal) * int(self._index.code_size)

    def _as_rows(self, vectors) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"dense vectors must be [n, {self.dim}] (the index's dimension), got {vectors.shape}")
        return vectors

    def add(self, vectors) -> None:
        self._index.add(self._as_rows(vectors))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._index.search(self._as_rows(queries), k)
        scores[ids == PAD_ID] = -np.inf  # FAISS pads with the lowest float32, not -inf
        return scores, ids.astype(np.int64)


class SeismicIndex(Retriever):
    """Approximate sparse search with Seismic (pyseismic-lsr): pruned, clustered posting lists with summaries. The
    index is static, so documents added after a build trigger a rebuild at the next search. Documents with no
    non-zeros are not indexed by Seismic and are never returned. Scores are float32 from float16-stored weights."""

    def __init__(
        self,
        vocab_size: int,
        n_postings: int = 3500,
        centroid_fraction: float = 0.1,
        summary_energy: float = 0.4,
        query_cut: int = 10,
        heap_factor: float = 0.7,
        num_threads: int = 1,
    ):
        import seismic

        self._seismic = seismic
        self.vocab_size = vocab_size
        self.build_options = {
            "n_postings": n_postings,
            "centroid_fraction": centroid_fraction,
            "summary_energy": summary_energy,
            "num_threads": num_threads,
        }
        self.search_options = {"query_cut": query_cut, "heap_factor": heap_factor, "num_threads": num_threads}
        self._dataset = seismic.SeismicDataset()
        self._num_documents = 0
        self._index = None
        self._index_bytes = 0

    @property
    def num_documents(self) -> int:
        return self._num_documents

    @property
    def memory_bytes(self) -> int:
        self.build()
        return self._index_bytes

    def add(self, vectors) -> None:
        rows = as_sparse_rows(vectors, self.vocab_size)
        doc_ids = [str(i) for i in range(self._num_documents, self._num_documents + rows.shape[0])]
        # Component ids are used as they are: a query addresses vocabulary id 42 as the string "42".
        self._dataset.add_documents_by_id(
            doc_ids, rows.indices.astype(np.int64), rows.data, rows.indptr.astype(np.int64)
        )
        self._num_documents += rows.shape[0]
        self._index = None

    def build(self) -> None:
        """Builds the index over every document added so far, unless that is done (search calls this too)."""
        if self._index is not None:
            return
        if self._dataset.len == 0:
            raise ValueError("the Seismic index has no document with a non-zero weight; add documents first")
        # Seismic prints its build progress and space report to stdout; keep the first quiet and parse the second.
        self._index, _ = _call_capturing_stdout(
            self._seismic.SeismicIndex.build_from_dataset, self._dataset, **self.build_options
        )
        _, space_report = _call_capturing_stdout(self._index.print_space_usage_byte)
        self._index_bytes = _total_bytes(space_report)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.build()
        queries = as_sparse_rows(queries, self.vocab_size)
        string_type = self._seismic.get_seismic_string()
        query_ids = np.asarray([str(i) for i in range(queries.shape[0])], dtype=string_type)
        components = [
            queries.indices[queries.indptr[r] : queries.indptr[r + 1]].astype(str).astype(string_type)
            for r in range(queries.shape[0])
        ]
        values = [queries.data[queries.indptr[r] : queries.indptr[r + 1]] for r in range(queries.shape[0])]
        results = self._index.batch_search(query_ids, components, values, k=k, **self.search_options)
        scores = np.full((queries.shape[0], k), -np.inf, np.float32)
        ids = np.full((queries.shape[0], k), PAD_ID, np.int64)
        # batch_search may return the queries' result lists out of order; each hit names its query.
        for hits in results:
            if hits:
                row = int(hits[0][0])
                hit_scores = np.asarray([score for _, score, _ in hits], np.float32)
                hit_ids = np.asarray([int(doc_id) for _, _, doc_id in hits], np.int64)
                scores[row], ids[row] = _padded(hit_scores, hit_ids, k)
        return scores, ids


def _call_capturing_stdout(function, *args, **kwargs) -> tuple[object, str]:
    """function(*args, **kwargs) and what it wrote to file descriptor 1, where native code prints."""
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+") as captured:
        saved = os.dup(1)
        try:
            os.dup2(captured.fileno(), 1)
            result = function(*args, **kwargs)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        return result, captured.read()


def _total_bytes(space_report: str) -> int:
    match = re.search(r"Total:\s*(\d+)\s*Bytes", space_report)
    if match is None:
        raise RuntimeError(
            "could not read the index size from Seismic's space report (has pyseismic-lsr changed its "
            f"print_space_usage_byte format?):\n{space_report}"
        )
    return int(match.group(1))
