"""Sparse inverted index vs dense FAISS flat on synthetic collections at 1 thread: queries/s, p50/p99 latency, index
bytes and recall@10 against exact search. Writes benchmarks/results/sparse_vs_dense.json and prints a table.

Run: python benchmarks/sparse_vs_dense.py [--num_documents 1000000] [--num_queries 100] [--seismic]
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy/BLAS load: the comparison is per core.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

from ela_jax.retrieval import compressed, retrievers  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sparse_vs_dense.json")
K = 10
TARGET = {"speedup": 5.8, "memory_ratio": 19.1, "min_recall@10": 0.95}  # LexLIP's reported gains over CLIP


def zipf_sparse(
    num_rows: int,
    vocab_size: int,
    min_nonzeros: int,
    max_nonzeros: int,
    rng: np.random.Generator,
    chunk_rows: int = 50_000,
) -> sparse.csr_matrix:
    """float32 CSR [num_rows, vocab_size], each row with a uniform number of non-zeros in [min, max] whose terms follow
    a Zipf-like law (term of popularity rank r drawn with probability about 1 / (r ln V)), weights Gamma(2, 0.5) > 0.

    Popularity ranks are scattered over the vocabulary by a fixed permutation, as in a real WordPiece vocabulary.
    """
    # rank = floor((V + 1) ** u) - 1 for u ~ U[0, 1) follows P(rank r) = log((r + 2) / (r + 1)) / log(V + 1).
    rank_probability = np.log((np.arange(vocab_size) + 2) / (np.arange(vocab_size) + 1)) / np.log(vocab_size + 1)
    term_of_rank = np.random.default_rng(0).permutation(vocab_size).astype(np.int32)
    # Draws with replacement needed for an expected number of distinct terms: a little more than the target, so that
    # taking the first `target` distinct terms (in vocabulary order, unrelated to popularity) fixes the count.
    draw_grid = np.arange(min_nonzeros, 6 * max_nonzeros)
    expected_distinct = np.array([np.sum(1 - (1 - rank_probability) ** m) for m in draw_grid])
    row_counts, row_terms = [], []
    for start in range(0, num_rows, chunk_rows):
        rows = min(chunk_rows, num_rows - start)
        targets = rng.integers(min_nonzeros, max_nonzeros + 1, rows)
        draws = draw_grid[np.minimum(np.searchsorted(expected_distinct, 1.15 * targets), len(draw_grid) - 1)]
        ranks = np.floor(np.power(vocab_size + 1.0, rng.random((rows, draws.max())))).astype(np.int32) - 1
        terms = term_of_rank[np.minimum(ranks, vocab_size - 1)]
        terms[np.arange(draws.max())[None, :] >= draws[:, None]] = vocab_size  # unused draws sort last
        terms.sort(axis=1)
        keep = np.ones(terms.shape, bool)
        keep[:, 1:] = terms[:, 1:] != terms[:, :-1]
        keep &= terms < vocab_size
        keep &= np.cumsum(keep, axis=1) <= targets[:, None]
        row_counts.append(keep.sum(axis=1))
        row_terms.append(terms[keep])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(row_counts))]).astype(np.int64)
    indices = np.concatenate(row_terms)
    weights = rng.gamma(2.0, 0.5, len(indices)).astype(np.float32)
    return sparse.csr_matrix((weights, indices, indptr), shape=(num_rows, vocab_size))


def exact_sparse_top_k(
    documents: sparse.csr_matrix, queries: sparse.csr_matrix, k: int, chunk_rows: int = 100_000
) -> np.ndarray:
    """Brute-force ids [queries, k] of the float64 dot product (ties to the lower id), one chunk of documents at a
    time."""
    dense_queries = queries.toarray().astype(np.float64).T  # [vocab, queries]
    best_scores = np.full((queries.shape[0], 0), -np.inf)
    best_ids = np.zeros((queries.shape[0], 0), np.int64)
    for start in range(0, documents.shape[0], chunk_rows):
        chunk = documents[start : start + chunk_rows].astype(np.float64)
        scores = np.asarray(chunk @ dense_queries).T  # [queries, chunk]
        ids = np.broadcast_to(np.arange(start, start + chunk.shape[0]), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, ids], axis=1)
        order = np.stack([np.lexsort((i, -s))[:k] for s, i in zip(best_scores, best_ids)])
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_ids = np.take_along_axis(best_ids, order, axis=1)
    return best_ids


def exact_dense_top_k(documents: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int = 200_000) -> np.ndarray:
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(documents), chunk_rows):
        scores = queries @ documents[start : start + chunk_rows].T  # [queries, chunk]
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)], axis=1
        )
        order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_ids = np.take_along_axis(best_ids, order, axis=1)
    return best_ids


def recall_at_k(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, expected)]))


def measure(retriever: retrievers.Retriever, queries, expected_ids: np.ndarray) -> dict:
    """One query per call (latency), then all queries in one call (batched throughput)."""
    latencies, found = [], []
    for row in range(queries.shape[0]):
        start = time.perf_counter()
        _, ids = retriever.search(queries[row : row + 1], K)
        latencies.append(time.perf_counter() - start)
        found.append(ids[0])
    start = time.perf_counter()
    retriever.search(queries, K)
    batched_seconds = time.perf_counter() - start
    latencies_ms = 1e3 * np.asarray(latencies)
    return {
        "queries_per_second": float(len(latencies) / np.sum(latencies)),
        "p50_latency_ms": float(np.percentile(latencies_ms, 50)),
        "p99_latency_ms": float(np.percentile(latencies_ms, 99)),
        "batched_queries_per_second": float(queries.shape[0] / batched_seconds),
        "index_bytes": int(retriever.memory_bytes),
        "recall@10": recall_at_k(np.stack(found), expected_ids),
    }


def timed_add(retriever: retrievers.Retriever, vectors) -> float:
    start = time.perf_counter()
    retriever.add(vectors)
    if isinstance(retriever, retrievers.SeismicIndex):
        retriever.build()  # Seismic builds lazily; build now so that search timings exclude it
    return time.perf_counter() - start


def id_entropy_bits_per_posting(documents: sparse.csr_matrix) -> float:
    """Bits per posting that any lossless code needs on average for the document ids, if each term's documents are a
    uniformly random subset of its document frequency (as generated): sum_t N H(df_t / N) / postings."""
    frequency = np.bincount(documents.indices, minlength=documents.shape[1])
    p = frequency[frequency > 0] / documents.shape[0]
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(np.maximum(1 - p, 1e-300)))
    return float(documents.shape[0] * entropy.sum() / documents.nnz)


def run(
    num_documents: int,
    num_queries: int,
    vocab_size: int,
    dense_dim: int,
    with_seismic: bool,
    seed: int,
    nonzero_range: tuple[int, int] = (100, 200),
) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    documents = zipf_sparse(num_documents, vocab_size, *nonzero_range, rng)
    queries = zipf_sparse(num_queries, vocab_size, 10, 30, rng)
    generation_seconds = time.perf_counter() - started
    expected_sparse = exact_sparse_top_k(documents, queries, K)
    document_nonzeros = np.diff(documents.indptr)
    results = {}

    exact = retrievers.ExactSparseIndex(vocab_size)
    build_seconds = timed_add(exact, documents)
    results["sparse_exact_csr"] = {"build_seconds": build_seconds, **measure(exact, queries, expected_sparse)}
    del exact
    for weight_bits in (8, 7, 6, 4):
        packed = compressed.CompressedSparseIndex(vocab_size, weight_bits=weight_bits)
        build_seconds = timed_add(packed, documents)
        packed.search(queries[:1], K)  # numba compiles its kernel at the first search (or loads it from its cache)
        results[f"sparse_compressed_{weight_bits}bit"] = {
            "build_seconds": build_seconds,
            **measure(packed, queries, expected_sparse),
            "bytes_per_posting": packed.memory_bytes / documents.nnz,
            "dropped_postings": packed.dropped_postings,
        }
        del packed
    id_bits = id_entropy_bits_per_posting(documents)
    if with_seismic:
        # Seismic's approximation trades recall for speed through query_cut and heap_factor; the first setting
        # in this list that reaches the target recall is reported, every tried setting is kept.
        seismic = retrievers.SeismicIndex(
            vocab_size, n_postings=4000, centroid_fraction=0.1, summary_energy=0.4, num_threads=1
        )
        build_seconds = timed_add(seismic, documents)
        sweep = []
        for query_cut, heap_factor in ((10, 0.7), (20, 0.8), (30, 0.9), (30, 1.0)):
            seismic.search_options.update(query_cut=query_cut, heap_factor=heap_factor)
            sweep.append(
                {"query_cut": query_cut, "heap_factor": heap_factor, **measure(seismic, queries, expected_sparse)}
            )
            if sweep[-1]["recall@10"] >= TARGET["min_recall@10"]:
                break
        results["sparse_seismic"] = {
            "build_seconds": build_seconds,
            "build_options": seismic.build_options,
            **sweep[-1],
            "sweep": sweep,
        }
        del seismic
    del documents

    dense_documents = rng.standard_normal((num_documents, dense_dim), dtype=np.float32)
    dense_documents /= np.linalg.norm(dense_documents, axis=1, keepdims=True)
    dense_queries = rng.standard_normal((num_queries, dense_dim), dtype=np.float32)
    dense_queries /= np.linalg.norm(dense_queries, axis=1, keepdims=True)
    expected_dense = exact_dense_top_k(dense_documents, dense_queries, K)
    flat = retrievers.FaissFlatIndex(dense_dim)
    build_seconds = timed_add(flat, dense_documents)
    del dense_documents
    results["dense_faiss_flat"] = {"build_seconds": build_seconds, **measure(flat, dense_queries, expected_dense)}

    dense = results["dense_faiss_flat"]
    for name, result in results.items():
        if name != "dense_faiss_flat":
            result["speedup_vs_dense"] = result["queries_per_second"] / dense["queries_per_second"]
            result["memory_ratio_vs_dense"] = dense["index_bytes"] / result["index_bytes"]
            result["meets_target"] = (
                result["speedup_vs_dense"] >= TARGET["speedup"]
                and result["memory_ratio_vs_dense"] >= TARGET["memory_ratio"]
                and result["recall@10"] >= TARGET["min_recall@10"]
            )
    nonzeros = np.diff(queries.indptr)
    return {
        "setup": {
            "num_documents": num_documents,
            "num_queries": num_queries,
            "k": K,
            "vocab_size": vocab_size,
            "document_nonzeros": {
                "min": int(document_nonzeros.min()),
                "mean": float(document_nonzeros.mean()),
                "max": int(document_nonzeros.max()),
            },
            "query_nonzeros": {"min": int(nonzeros.min()), "mean": float(nonzeros.mean()), "max": int(nonzeros.max())},
            "term_distribution": "Zipf-like: P(popularity rank r) = log((r+2)/(r+1)) / log(V+1)",
            "sparse_weights": "Gamma(2, 0.5) float32",
            "dense_dim": dense_dim,
            "dense_vectors": "unit-norm Gaussian float32",
            "threads": 1,
            "seed": seed,
            "generation_seconds": generation_seconds,
            "latency": "one query per search call; batched = all queries in one call",
            "id_entropy_bits_per_posting": id_bits,
            # Even with free weights, no lossless id code beats this ratio on this collection.
            "memory_ratio_bound_ids_only": 8 * dense_dim * 4 / (id_bits * float(document_nonzeros.mean())),
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
        },
        "target": TARGET,
        "results": results,
    }


def print_table(report: dict) -> None:
    setup = report["setup"]
    print(f"\n{setup['num_documents']:,} documents, {setup['num_queries']} queries, k={K}, 1 thread")
    print(
        f"{'index':<22}{'QPS':>10}{'p50 ms':>10}{'p99 ms':>10}{'batch QPS':>11}{'index MB':>11}{'R@10':>7}"
        f"{'speed-up':>10}{'memory':>8}"
    )
    for name, result in report["results"].items():
        speedup = f"{result['speedup_vs_dense']:.1f}x" if "speedup_vs_dense" in result else "1.0x"
        memory = f"{result['memory_ratio_vs_dense']:.1f}x" if "memory_ratio_vs_dense" in result else "1.0x"
        print(
            f"{name:<22}{result['queries_per_second']:>10.1f}{result['p50_latency_ms']:>10.2f}"
            f"{result['p99_latency_ms']:>10.2f}{result['batched_queries_per_second']:>11.1f}"
            f"{result['index_bytes'] / 2**20:>11.1f}{result['recall@10']:>7.3f}{speedup:>10}{memory:>8}"
        )
    print(
        f"target (LexLIP vs CLIP): {TARGET['speedup']}x speed, {TARGET['memory_ratio']}x memory at recall@10 >= "
        f"{TARGET['min_recall@10']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_documents", type=int, default=1_000_000)
    parser.add_argument("--num_queries", type=int, default=100)
    parser.add_argument("--vocab_size", type=int, default=30522)
    parser.add_argument("--dense_dim", type=int, default=512)
    parser.add_argument(
        "--seismic",
        action="store_true",
        help="also the approximate Seismic index (its 1-thread build took 108 s for 50,000 documents "
        "on a 2-core machine, so it is off by default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--document_nonzeros", default="100,200", help="min,max non-zeros per document")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    nonzeros = tuple(int(n) for n in args.document_nonzeros.split(","))
    report = run(
        args.num_documents, args.num_queries, args.vocab_size, args.dense_dim, args.seismic, args.seed, nonzeros
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print_table(report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
