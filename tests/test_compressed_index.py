"""The compressed inverted index: bit packing and Elias-Fano round trips, the decoding kernel against plain numpy,
exact top-k over the quantised collection (ties, empty rows, several segments), recall against float search, and
the errors and counters of its quantisation."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from scipy import sparse

from ela_jax.retrieval import compressed, retrievers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from sparse_vs_dense import zipf_sparse  # noqa: E402
from tests.helpers import brute_force_top_k, dyadic_sparse  # noqa: E402


@pytest.mark.parametrize("width", [0, 1, 3, 7, 8, 13, 20])
def test_pack_bits_round_trips(width):
    values = np.random.default_rng(width).integers(0, 2**width, 1001)
    packed = compressed.pack_bits(values, width)
    assert packed.dtype == np.uint8 and len(packed) == (1001 * width + 7) // 8
    np.testing.assert_array_equal(compressed.unpack_bits(packed, width, 1001), values)


@pytest.mark.parametrize("universe,length", [(1, 1), (10, 10), (1000, 1), (1000, 999), (100_000, 37), (4096, 512)])
def test_elias_fano_round_trips_within_two_bits_of_log_universe_over_length(universe, length):
    ids = np.sort(np.random.default_rng(universe + length).choice(universe, length, replace=False))
    high, low = compressed.elias_fano_encode(ids, universe)
    np.testing.assert_array_equal(compressed.elias_fano_decode(high, low, length, universe), ids)
    bits_per_id = 8 * (len(high) + len(low)) / length
    assert bits_per_id <= 2 + np.log2(universe / length) + 1 + 16 / length  # +1 for the floor, bytes round up


def test_elias_fano_of_an_empty_list_takes_no_bytes():
    high, low = compressed.elias_fano_encode(np.zeros(0, np.int64), 1000)
    assert len(high) == len(low) == 0


@pytest.mark.parametrize("weight_bits", [4, 6, 8])
def test_kernel_scores_equal_numpy_decoding_of_the_same_postings(weight_bits):
    rng = np.random.default_rng(1)
    documents = sparse.csr_matrix(dyadic_sparse(rng, 500, 40, 0.3))
    search_index = compressed.CompressedSparseIndex(40, weight_bits=weight_bits)
    search_index.add(documents)
    segment = search_index.segments[0]
    terms, weights = np.array([3, 0, 17, 39]), np.array([0.5, 2.0, 1.25, 0.75], np.float32)
    expected = np.zeros(500)
    for term, weight in zip(terms, weights):
        ids, levels = segment.postings(term, weight_bits)
        expected[ids] += weight * search_index.codebook[levels.astype(np.int64)]
    np.testing.assert_allclose(search_index.segment_scores(segment, terms, weights), expected, rtol=1e-12)


@pytest.mark.parametrize("weight_bits", [4, 6, 8])
def test_search_is_the_exact_top10_of_the_quantised_collection_with_ties_empty_rows_and_segments(weight_bits):
    rng = np.random.default_rng(2)
    vocab = 60
    documents = dyadic_sparse(rng, 400, vocab, 0.05)
    documents[10:20] = 0.0  # empty documents score 0 and complete results by lowest id
    documents[300:310] = documents[50]  # identical documents, in another segment, tie with it
    queries = dyadic_sparse(rng, 40, vocab, 0.08)
    queries[0] = 0.0  # an empty query: the top 10 are ids 0..9
    queries[1] = 0.0
    queries[1, np.flatnonzero(documents[50])[0]] = 1.0
    # Levels of 1/4 (exact in float64), so scores are exact in any summation order and ties are real ties.
    search_index = compressed.CompressedSparseIndex(vocab, weight_bits, max_weight=(2**weight_bits - 1) / 4)
    for start in (0, 128, 256):  # three segments
        search_index.add(documents[start : start + 128] if start < 256 else documents[start:])
    assert search_index.num_documents == 400
    scores, ids = search_index.search(queries, 10)
    expected_scores, expected_ids = brute_force_top_k(queries, search_index.dequantised(documents).toarray(), 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-12)
    np.testing.assert_array_equal(ids[0], np.arange(10))


def test_fewer_documents_than_k_are_padded():
    search_index = compressed.CompressedSparseIndex(5)
    search_index.add(np.array([[0, 1, 0, 0, 2], [1, 0, 0, 0, 0]], np.float32))
    scores, ids = search_index.search(np.array([[0, 0, 0, 0, 1]], np.float32), 4)
    np.testing.assert_array_equal(ids, [[0, 1, retrievers.PAD_ID, retrievers.PAD_ID]])
    assert scores[0, 0] == pytest.approx(2.0) and scores[0, 1] == 0.0 and np.all(np.isneginf(scores[0, 2:]))


def test_8bit_index_keeps_recall_at_10_of_float_search_in_under_a_third_of_csr_memory():
    rng = np.random.default_rng(3)
    documents = zipf_sparse(20_000, 30522, 100, 200, rng)
    queries = zipf_sparse(30, 30522, 10, 30, rng)
    search_index = compressed.CompressedSparseIndex(30522, weight_bits=8)
    search_index.add(documents)
    _, ids = search_index.search(queries, 10)
    exact = retrievers.ExactSparseIndex(30522)
    exact.add(documents)
    _, expected = exact.search(queries, 10)
    recall = np.mean([len(set(found) & set(wanted)) / 10 for found, wanted in zip(ids, expected)])
    assert recall >= 0.95
    assert search_index.memory_bytes * 3.5 < exact.memory_bytes  # 8 bytes per CSR posting; ~2.2 here


def test_quantisation_errors_and_counters(caplog):
    with pytest.raises(ValueError, match="weight_bits"):
        compressed.CompressedSparseIndex(4, weight_bits=3)
    with pytest.raises(ValueError, match="max_weight"):
        compressed.CompressedSparseIndex(4, max_weight=0.0)
    search_index = compressed.CompressedSparseIndex(4)
    with pytest.raises(ValueError, match="non-negative"):
        search_index.add(np.array([[0.5, -1.0, 0, 0]], np.float32))
    search_index.add(np.array([[2.0, 1e-4, 0, 0]], np.float32))  # the scale: 2.0; 1e-4 rounds to level 0
    assert search_index.dropped_postings == 1
    search_index.add(np.array([[3.0, 1.0, 0, 0]], np.float32))  # 3.0 is above the scale: clipped to 2.0
    assert search_index.clipped_weights == 1 and "clipped" in caplog.text
    scores, ids = search_index.search(np.array([[1.0, 0, 0, 0]], np.float32), 2)
    np.testing.assert_allclose(scores[0], [2.0, 2.0])
    np.testing.assert_array_equal(ids[0], [0, 1])
