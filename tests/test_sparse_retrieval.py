"""Sparse serving: the exact inverted index and FAISS flat equal brute force, Seismic's recall, the JSONL export's
round trip and stats, and the lexicon-patch heatmap of a tiny model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import sparse

from ela_jax.retrieval import export, retrievers
from tests.helpers import brute_force_top_k, dyadic_sparse


def test_exact_sparse_index_returns_the_brute_force_top10_with_ties_and_empty_vectors():
    rng = np.random.default_rng(0)
    vocab = 60
    documents = dyadic_sparse(rng, 300, vocab, 0.05)
    documents[10:20] = 0.0  # empty documents score 0 and fill results by lowest id
    documents[100:110] = documents[50]  # identical documents tie with each other
    queries = dyadic_sparse(rng, 40, vocab, 0.08)
    queries[0] = 0.0  # an empty query: every document scores 0, so the top 10 are ids 0..9
    queries[1] = 0.0
    queries[1, np.flatnonzero(documents[50])[0]] = 1.0  # touches the tied block
    queries[2] = 0.0
    queries[2, 59] = 0.25
    documents[:, 59] = 0.0
    documents[[205, 7], 59] = 0.5  # a query matching only two documents: the rest are zero-score fill
    retriever = retrievers.ExactSparseIndex(vocab)
    retriever.add(sparse.csr_matrix(documents[:120]))
    retriever.add(documents[120:])  # a second batch, given dense
    scores, ids = retriever.search(sparse.csr_matrix(queries), k=10)
    expected_scores, expected_ids = brute_force_top_k(queries, documents, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_array_equal(ids[0], np.arange(10))
    np.testing.assert_array_equal(ids[2][:4], [7, 205, 0, 1])


def test_exact_sparse_index_equals_brute_force_on_random_floats_and_pads_short_collections():
    documents = sparse.random(500, 200, density=0.04, random_state=2, format="csr", dtype=np.float32)
    queries = sparse.random(30, 200, density=0.05, random_state=3, format="csr", dtype=np.float32)
    retriever = retrievers.ExactSparseIndex(200)
    retriever.add(documents)
    scores, ids = retriever.search(queries, k=10)
    expected_scores, expected_ids = brute_force_top_k(queries.toarray(), documents.toarray(), 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-12)
    assert retriever.memory_bytes == (documents.nnz * 8 + 201 * retriever._postings.indptr.itemsize)
    with pytest.raises(ValueError, match="non-negative"):
        retriever.search(-queries, k=10)

    short = retrievers.ExactSparseIndex(200)
    short.add(documents[:3])
    scores, ids = short.search(queries[:1], k=5)
    np.testing.assert_array_equal(ids[0, 3:], [retrievers.PAD_ID, retrievers.PAD_ID])
    assert np.all(np.isneginf(scores[0, 3:])) and sorted(ids[0, :3]) == [0, 1, 2]


def test_faiss_flat_index_equals_numpy_brute_force():
    rng = np.random.default_rng(2)
    documents = rng.standard_normal((400, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    retriever = retrievers.FaissFlatIndex(32)
    retriever.add(documents[:150])
    retriever.add(documents[150:])
    scores, ids = retriever.search(queries, k=10)
    expected_scores, expected_ids = brute_force_top_k(queries, documents, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert retriever.memory_bytes == 400 * 32 * 4

    short = retrievers.FaissFlatIndex(32)
    short.add(documents[:3])
    scores, ids = short.search(queries[:1], k=5)
    np.testing.assert_array_equal(ids[0, 3:], [retrievers.PAD_ID, retrievers.PAD_ID])
    assert np.all(np.isneginf(scores[0, 3:]))


def test_seismic_index_reaches_095_recall_at_10_of_exact_search():
    pytest.importorskip("seismic")
    documents = sparse.random(2000, 300, density=0.05, random_state=4, format="csr", dtype=np.float32)
    queries = sparse.random(50, 300, density=0.04, random_state=5, format="csr", dtype=np.float32)
    retriever = retrievers.SeismicIndex(300, n_postings=400, query_cut=20, heap_factor=0.9)
    retriever.add(documents)
    _, ids = retriever.search(queries, k=10)
    _, expected_ids = brute_force_top_k(queries.toarray(), documents.toarray(), 10)
    recall = np.mean([len(set(found) & set(expected)) / 10 for found, expected in zip(ids, expected_ids)])
    assert recall >= 0.95
    assert retriever.memory_bytes > 0


def test_sparsify_keeps_top_k_above_threshold_with_ties_to_the_lower_id():
    lexicon = np.array(
        [[0.0, 0.5, 0.9, 0.5, 0.04, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0, 0.0, 0.01]], np.float32
    )
    pruned = export.sparsify(lexicon, top_k=3, threshold=0.1)
    np.testing.assert_array_equal(
        pruned.toarray(), np.array([[0, 0.5, 0.9, 0.5, 0, 0], [0] * 6, [0.2, 0, 0, 0, 0, 0]], np.float32)
    )
    impacts = export.quantize(export.sparsify(lexicon), scale=10)
    assert impacts.dtype == np.int32
    # 0.04 * 10 and 0.01 * 10 round to 0 and are dropped, not written as zero impacts.
    np.testing.assert_array_equal(impacts.toarray(), [[0, 5, 9, 5, 0, 5], [0] * 6, [2, 0, 0, 0, 0, 0]])
    assert impacts.nnz == 5


@pytest.mark.parametrize("quantize_scale", [None, 100.0])
def test_export_jsonl_round_trips_and_counts_stats(tmp_path, quantize_scale):
    vocabulary = ["[PAD]", "red", "circle", "##s", "blue", "top"]
    image_lexicon = np.array(
        [
            [0.0, 1.25, 0.3, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # an empty document
            [0.0, 0.0, 0.7, 0.0, 2.0, 0.1],
        ],
        np.float32,
    )
    caption_lexicon = np.array(
        [
            [0.0, 0.9, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # two empty queries
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.4, 0.0, 0.0],
        ],
        np.float32,
    )
    documents = export.prune_and_quantize(image_lexicon, top_k=2, threshold=0.0, quantize_scale=quantize_scale)
    queries = export.prune_and_quantize(caption_lexicon, top_k=2, threshold=0.0, quantize_scale=quantize_scale)
    stats = export.export_vectors(
        str(tmp_path), documents, queries, vocabulary, {"documents": [0, 1, 2]}, {"top_k": 2}, relevant=[0, 0, 2, 1]
    )
    assert sorted(os.listdir(tmp_path)) == ["documents", "id_map.json", "qrels.txt", "queries", "stats.json"]
    lines = (tmp_path / "documents" / "documents.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"id": 1, "vector": {}}
    assert set(json.loads(lines[2])["vector"]) == {"circle", "blue"}  # top 2: 0.1 ("top") is pruned
    for name, written in ((export.DOCUMENTS_FILE, documents), (export.QUERIES_FILE, queries)):
        ids, parsed = export.read_jsonl(str(tmp_path / name), vocabulary)
        np.testing.assert_array_equal(ids, np.arange(written.shape[0]))
        assert parsed.dtype == (np.int32 if quantize_scale else np.float32)
        np.testing.assert_array_equal(parsed.toarray(), written.toarray())
    if quantize_scale:
        assert json.loads(lines[0])["vector"] == {"red": 125, "circle": 30}
    assert stats["documents"] == {
        "count": 3,
        "avg_nonzeros": 4 / 3,
        "min_nonzeros": 0,
        "max_nonzeros": 2,
        "empty": 1,
        "vocabulary_coverage": 3 / 6,
    }
    assert stats["queries"] == {
        "count": 4,
        "avg_nonzeros": 0.5,
        "min_nonzeros": 0,
        "max_nonzeros": 1,
        "empty": 2,
        "vocabulary_coverage": 2 / 6,
    }
    assert stats["vocabulary_coverage"] == 4 / 6  # red, circle, blue, ##s
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def anserini_pseudo_documents(folder) -> dict[str, dict[str, int]]:
    """What Anserini's JsonVectorCollection indexes: every file in the folder, each line's `id` as text and each
    vector entry repeated asInt(weight) times (Jackson's asInt truncates a float)."""
    documents = {}
    for name in sorted(os.listdir(folder)):
        for line in (folder / name).read_text().splitlines():
            record = json.loads(line)
            documents[str(record["id"])] = {
                term: int(weight) for term, weight in record["vector"].items() if int(weight)
            }
    return documents


def test_the_export_loads_in_anserini_readers_with_integer_impacts(tmp_path):
    """Documents alone in their folder with integer weights, queries keyed `qid` (JsonIntVectorTopicReader), and a
    TREC qrels file naming each caption's image; a float export would index almost nothing."""
    vocabulary = ["[PAD]", "red", "circle", "blue"]
    images = np.array([[0.0, 1.25, 0.3, 0.0], [0.0, 0.0, 0.7, 0.4]], np.float32)
    captions = np.array([[0.0, 0.9, 0.0, 0.0], [0.0, 0.0, 0.5, 0.6], [0.0, 0.2, 0.8, 0.0]], np.float32)
    scale = export.ANSERINI_SCALE
    for folder, quantize_scale in ((tmp_path / "int", scale), (tmp_path / "float", None)):
        export.export_vectors(
            str(folder),
            export.prune_and_quantize(images, None, 0.0, quantize_scale),
            export.prune_and_quantize(captions, None, 0.0, quantize_scale),
            vocabulary,
            {},
            {},
            relevant=[0, 1, 1],
        )
    assert anserini_pseudo_documents(tmp_path / "int" / "documents") == {
        "0": {"red": 125, "circle": 30},
        "1": {"circle": 70, "blue": 40},
    }
    assert anserini_pseudo_documents(tmp_path / "float" / "documents") == {"0": {"red": 1}, "1": {}}
    topics = [json.loads(line) for line in (tmp_path / "int" / export.QUERIES_FILE).read_text().splitlines()]
    assert [(topic["qid"], topic["vector"]) for topic in topics] == [
        (0, {"red": 90}),
        (1, {"circle": 50, "blue": 60}),
        (2, {"red": 20, "circle": 80}),
    ]
    assert (tmp_path / "int" / "qrels.txt").read_text() == "0 0 0 1\n1 0 1 1\n2 0 1 1\n"


@pytest.mark.integration
def test_heatmap_of_a_tiny_model_marks_caption_words_and_each_words_best_patch(tmp_path):
    import jax

    from ela_jax.experiment import Experiment
    from ela_jax.models.ela import ELAModel
    from ela_jax.retrieval import heatmap
    from tests.helpers import make_tiny_config

    experiment = Experiment.build(make_tiny_config(), str(tmp_path / "run"))
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    # Only the image side is needed, so only its parameters are initialised (much faster than a full train state).
    init = jax.jit(lambda key: experiment.model.init(key, images, method=ELAModel.encode_image))
    params = init(jax.random.key(0))["params"]
    vocab_logits, lexicon = heatmap.encode_patches(experiment.model, params, images)
    assert vocab_logits.shape == (2, 16, experiment.tokenizer.vocab_size)  # 32 px / patch 8 = a 4 x 4 grid
    caption = "a red circle at the top left"
    word_maps = heatmap.lexicon_patch_maps(vocab_logits[1], lexicon[1], experiment.tokenizer, caption, num_words=6)
    caption_words = set(caption.split())
    assert len(word_maps) == 6
    assert [w.weight for w in word_maps] == sorted((w.weight for w in word_maps), reverse=True)
    for word_map in word_maps:
        assert word_map.in_caption == (word_map.word in caption_words)
        assert word_map.patch_activation.shape == (4, 4)
        # The pooled weight is log(1 + the chosen patch's activation): each word's weight comes from its best patch.
        assert word_map.weight == pytest.approx(np.log1p(word_map.patch_activation[word_map.best_patch]), abs=1e-5)
    path = heatmap.plot_heatmap(images[1], caption, word_maps, str(tmp_path / "heatmap.png"))
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] >= 800
