"""A compressed inverted index: Elias-Fano document ids and integer-quantised weights, in append-only segments.

Memory per posting is what sparse retrieval pays for. A CSR posting costs 8 bytes (int32 id + float32 weight);
here an id costs about 2 + log2(documents / list length) bits (Elias-Fano, within 2 bits of the entropy of a random
subset of that size) and a weight `weight_bits` bits (linear quantisation to 2^bits - 1 levels of one shared scale,
as Anserini quantises impact scores). Search is exact over the quantised collection: the top-k of the dot product
with the dequantised weights, ties to the lower id.
"""

from __future__ import annotations

import dataclasses
import logging

import numba
import numpy as np
from scipy import sparse

from ela_jax.retrieval import retrievers

WEIGHT_BITS = (4, 5, 6, 7, 8)


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative ints [n] < 2^width -> uint8 bytes holding them as `width`-bit big-endian fields, back to back."""
    if width == 0 or len(values) == 0:
        return np.zeros(0, np.uint8)
    if width == 8:
        return values.astype(np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bits = (values.astype(np.uint64)[:, None] >> shifts) & 1
    return np.packbits(bits.astype(np.uint8).ravel())


def unpack_bits(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of pack_bits: int64 [count]."""
    if width == 0:
        return np.zeros(count, np.int64)
    if width == 8:
        return packed[:count].astype(np.int64)
    bits = np.unpackbits(packed, count=count * width).reshape(count, width)
    return bits.astype(np.int64) @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))


def elias_fano_low_width(length: int, universe: int) -> int:
    """Low-bit width of the Elias-Fano code of `length` sorted ids below `universe`: floor(log2(universe / length))."""
    return max(0, int(np.floor(np.log2(universe / length)))) if length else 0


def elias_fano_encode(ids: np.ndarray, universe: int) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing ids [n] in [0, universe) -> (high bytes, low bytes). The high part is a bit vector with
    one bit set per id, at (id >> low_width) + its position: n + (universe >> low_width) + 1 bits."""
    if len(ids) == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.uint8)
    width = elias_fano_low_width(len(ids), universe)
    ids = ids.astype(np.int64)
    high = np.zeros(len(ids) + (universe >> width) + 1, np.uint8)
    high[(ids >> width) + np.arange(len(ids))] = 1
    return np.packbits(high), pack_bits(ids & ((1 << width) - 1), width)


def elias_fano_decode(high: np.ndarray, low: np.ndarray, length: int, universe: int) -> np.ndarray:
    width = elias_fano_low_width(length, universe)
    set_bits = np.flatnonzero(np.unpackbits(high, count=length + (universe >> width) + 1))
    return ((set_bits - np.arange(length)) << width) | unpack_bits(low, width, length)


@dataclasses.dataclass
class Segment:
    """One `add`'s documents: for each term, its Elias-Fano ids and packed weight levels, stored back to back in
    three byte arrays with int64 offsets [vocab + 1] each."""

    num_documents: int
    lengths: np.ndarray  # int64 [vocab]: postings per term
    high: np.ndarray
    high_offsets: np.ndarray
    low: np.ndarray
    low_offsets: np.ndarray
    weights: np.ndarray
    weight_offsets: np.ndarray

    @property
    def nbytes(self) -> int:
        arrays = (self.lengths, self.high, self.high_offsets, self.low, self.low_offsets, self.weights)
        return int(sum(a.nbytes for a in arrays) + self.weight_offsets.nbytes)

    def postings(self, term: int, weight_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(document ids int64 [n], weight levels float32 [n]) of one term in this segment."""
        length = int(self.lengths[term])
        if length == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        high = self.high[self.high_offsets[term] : self.high_offsets[term + 1]]
        low = self.low[self.low_offsets[term] : self.low_offsets[term + 1]]
        ids = elias_fano_decode(high, low, length, self.num_documents)
        levels = unpack_bits(
            self.weights[self.weight_offsets[term] : self.weight_offsets[term + 1]], weight_bits, length
        ).astype(np.float32)
        return ids, levels


def _concatenated(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(parts) + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    return (np.concatenate(parts) if parts else np.zeros(0, np.uint8)), offsets


def build_segment(levels: sparse.csr_matrix, weight_bits: int) -> Segment:
    """Quantised document rows [n, vocab] (integer levels > 0) -> a Segment."""
    postings = levels.T.tocsr()  # [vocab, documents], ids sorted per term
    postings.sort_indices()
    universe = levels.shape[0]
    if elias_fano_low_width(1, universe) > MAX_FIELD_WIDTH:
        raise ValueError(
            f"one add of {universe} documents is more than a segment holds (2^{MAX_FIELD_WIDTH + 1}); add them in parts"
        )
    high, low, weights = [], [], []
    for term in range(postings.shape[0]):
        start, end = postings.indptr[term], postings.indptr[term + 1]
        term_high, term_low = elias_fano_encode(postings.indices[start:end], universe)
        high.append(term_high)
        low.append(term_low)
        weights.append(pack_bits(postings.data[start:end].astype(np.int64), weight_bits))
    high_bytes, high_offsets = _concatenated(high)
    low_bytes, low_offsets = _concatenated(low)
    low_bytes = np.concatenate([low_bytes, np.zeros(FIELD_PADDING, np.uint8)])
    weight_bytes, weight_offsets = _concatenated(weights)
    weight_bytes = np.concatenate([weight_bytes, np.zeros(FIELD_PADDING, np.uint8)])
    return Segment(
        universe,
        np.diff(postings.indptr).astype(np.int64),
        high_bytes,
        high_offsets,
        low_bytes,
        low_offsets,
        weight_bytes,
        weight_offsets,
    )


# For each byte value: how many bits are set, and their indexes (0 = most significant), so the kernel visits set bits
# without testing each bit.
_SET_BIT_COUNT = np.array([bin(value).count("1") for value in range(256)], np.int64)
_SET_BIT_INDEXES = np.array(
    [[bit for bit in range(8) if value & (0x80 >> bit)] + [0] * (8 - bin(value).count("1")) for value in range(256)],
    np.int64,
)
FIELD_PADDING = 8  # zero bytes after packed fields, so that a 4-byte read near the end stays in bounds
MAX_FIELD_WIDTH = 25  # a field is read through one 32-bit window starting at any of a byte's 8 bits


@numba.njit(cache=True, nogil=True)
def _read_bits(packed: np.ndarray, first_bit: int, width: int) -> int:
    """The `width` <= MAX_FIELD_WIDTH bits at `first_bit` of big-endian packed bits, through one 32-bit window."""
    start = first_bit >> 3
    # numba types uint8-with-int64 arithmetic as float64: widen each byte first.
    window = (
        (np.int64(packed[start]) << 24)
        | (np.int64(packed[start + 1]) << 16)
        | (np.int64(packed[start + 2]) << 8)
        | np.int64(packed[start + 3])
    )
    return (window >> (32 - (first_bit & 7) - width)) & ((np.int64(1) << width) - 1)


@numba.njit(cache=True, nogil=True)
def _accumulate_term(
    high, low, low_start, low_width, length, weights, weight_start, weight_bits, contributions, scores
):
    """scores[id] += contributions[level] (the query weight times the level's value) for each of one term's
    postings, decoded on the fly: the i-th set bit of the Elias-Fano high part, at bit b, gives the id's high bits
    b - i; its low bits start at bit low_start + i * low_width of `low`, its level at weight_start + i * weight_bits
    of `weights`."""
    position = 0
    for byte_index in range(len(high)):
        byte = high[byte_index]
        for j in range(_SET_BIT_COUNT[byte]):
            high_bits = byte_index * 8 + _SET_BIT_INDEXES[byte, j] - position
            low_bits = _read_bits(low, low_start + position * low_width, low_width) if low_width else 0
            if weight_bits == 8:
                level = np.int64(weights[(weight_start >> 3) + position])
            else:
                level = _read_bits(weights, weight_start + position * weight_bits, weight_bits)
            scores[(high_bits << low_width) | low_bits] += contributions[level]
            position += 1
        if position == length:
            return


@numba.njit(cache=True, nogil=True)
def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k <= len(scores) best scores (unordered), ties to the lower id, in one pass: ids are visited in
    ascending order and only a strictly better score displaces the current k-th best."""
    best = np.empty(k, np.int64)
    best_scores = np.full(k, -np.inf)
    worst = 0  # slot of the current k-th best
    for document in range(len(scores)):
        if scores[document] > best_scores[worst]:
            best[worst] = document
            best_scores[worst] = scores[document]
            for slot in range(k):
                if best_scores[slot] < best_scores[worst] or (
                    best_scores[slot] == best_scores[worst] and best[slot] > best[worst]
                ):
                    worst = slot
    return best


def linear_codebook(weights: np.ndarray, weight_bits: int, max_weight: float | None) -> np.ndarray:
    """float64 [2^bits]: the weight each level stands for, level * top / (2^bits - 1) (Anserini's impact
    quantisation; 0 stands for zero). top = max_weight, or the largest of `weights`. Equal-count (quantile) levels
    were tried and lose recall: they widen the top levels, where the weights that decide a top-k lie."""
    top = max_weight if max_weight is not None else (float(weights.max()) if len(weights) else 1.0)
    return np.arange(2**weight_bits) * (top / (2**weight_bits - 1))


class CompressedSparseIndex(retrievers.Retriever):
    """Exact top-k over quantised lexicon weights, postings compressed (see the module docstring); each `add` makes
    one segment, searched one after the other with document ids offset.

    level = round(weight / max_weight * (2^bits - 1)), clipped to the top level (Anserini's impact scores).
    `max_weight` fixes the scale (the largest weight the model gives); without it the first `add`'s largest weight
    sets it, and later larger weights are clipped, counted in `clipped_weights` and logged. Weights that round to
    level 0 leave the index (`dropped_postings`): they add nothing to a score.
    """

    def __init__(
        self, vocab_size: int, weight_bits: int = 8, quantiser: str = "linear", max_weight: float | None = None
    ):
        if weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight_bits must be one of {WEIGHT_BITS}, got {weight_bits}")
        if max_weight is not None and not max_weight > 0:
            raise ValueError(f"max_weight must be > 0, got {max_weight}")
        self.vocab_size = vocab_size
        self.weight_bits = weight_bits
        self.max_weight = max_weight
        self.codebook: np.ndarray | None = None
        self.segments: list[Segment] = []
        self.clipped_weights = 0
        self.dropped_postings = 0

    @property
    def num_documents(self) -> int:
        return sum(segment.num_documents for segment in self.segments)

    @property
    def memory_bytes(self) -> int:
        codebook_bytes = self.codebook.nbytes if self.codebook is not None else 0
        return codebook_bytes + sum(segment.nbytes for segment in self.segments)

    def quantise(self, rows: sparse.csr_matrix) -> sparse.csr_matrix:
        """Non-negative float rows -> integer levels (CSR, level-0 postings removed); updates the counters."""
        if self.codebook is None:
            self.codebook = linear_codebook(rows.data, self.weight_bits, self.max_weight)
        top = self.codebook[-1]
        clipped = int(np.sum(rows.data > top))
        if clipped:
            self.clipped_weights += clipped
            logging.warning("%d weights above the index's top level %.4g were clipped; set max_weight", clipped, top)
        levels = rows.copy()
        levels.data = np.minimum(np.rint(rows.data / self.codebook[1]), len(self.codebook) - 1)
        levels.eliminate_zeros()
        self.dropped_postings += rows.nnz - levels.nnz
        return levels

    def dequantised(self, vectors) -> sparse.csr_matrix:
        """The collection as the index scores it: each weight replaced by its level's value (for exactness checks)."""
        levels = self.quantise(retrievers.as_sparse_rows(vectors, self.vocab_size))
        levels.data = self.codebook[levels.data.astype(np.int64)]
        return levels

    def add(self, vectors) -> None:
        rows = retrievers.non_negative_rows(vectors, self.vocab_size, "document")
        self.segments.append(build_segment(self.quantise(rows), self.weight_bits))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = retrievers.non_negative_rows(queries, self.vocab_size, "query")
        scores = np.full((queries.shape[0], k), -np.inf, np.float64)
        ids = np.full((queries.shape[0], k), retrievers.PAD_ID, np.int64)
        for row in range(queries.shape[0]):
            start, end = queries.indptr[row], queries.indptr[row + 1]
            row_scores, row_ids = self._search_one(queries.indices[start:end], queries.data[start:end], k)
            scores[row, : len(row_ids)], ids[row, : len(row_ids)] = row_scores, row_ids
        return scores, ids

    def segment_scores(self, segment: Segment, terms: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """float64 [segment documents]: every document's score, untouched ones 0. Terms are added in the query's
        order for every document, so equal documents get bit-equal scores and tie exactly."""
        scores = np.zeros(segment.num_documents, np.float64)
        for term, weight in zip(terms, weights.astype(np.float64)):
            length = int(segment.lengths[term])
            if length:
                _accumulate_term(
                    segment.high[segment.high_offsets[term] : segment.high_offsets[term + 1]],
                    segment.low,
                    8 * int(segment.low_offsets[term]),
                    elias_fano_low_width(length, segment.num_documents),
                    length,
                    segment.weights,
                    8 * int(segment.weight_offsets[term]),
                    self.weight_bits,
                    weight * self.codebook,
                    scores,
                )
        return scores

    def _search_one(self, terms: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        best_scores, best_ids, offset = np.zeros(0), np.zeros(0, np.int64), 0
        for segment in self.segments:
            scores = self.segment_scores(segment, terms, weights)
            candidates = _top_k(scores, min(k, segment.num_documents))
            best_scores = np.concatenate([best_scores, scores[candidates]])
            best_ids = np.concatenate([best_ids, candidates + offset])
            order = np.lexsort((best_ids, -best_scores))[:k]
            best_scores, best_ids = best_scores[order], best_ids[order]
            offset += segment.num_documents
        return best_scores, best_ids
