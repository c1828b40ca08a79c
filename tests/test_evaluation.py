"""Evaluation scores and paths: FILIP and hybrid scores on hand-built tokens, chunked == dense for every score, the
index path == the matrix path, chunked and padded encoding, and the evaluator on a tiny random model."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ela_jax import config as config_lib
from ela_jax import validation
from ela_jax.evaluation import retrieval, scores, search
from tests.helpers import make_tiny_config
from tests.helpers import dense_ranks, random_protocol


def eval_config(**overrides) -> types.SimpleNamespace:
    """The eval section as the scorers read it (a plain namespace: no model or data needed)."""
    settings = dict(
        batch_size=8,
        lexicon_similarity="dot",
        hybrid_weights={"global": 1.0, "lexicon": 0.5, "fine": 1.0},
        hybrid_normalise="std",
        retriever="matrix",
        seismic=config_lib.base_config().eval.seismic,
    )
    return types.SimpleNamespace(**{**settings, **overrides})


def normalised(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=-1, keepdims=True)).astype(np.float32)


def random_outputs(rng: np.random.Generator, count: int, tokens: int, first_token_masked: bool) -> dict:
    """Encoder outputs with the shapes the model gives: unit global and token vectors, non-negative sparse lexicon
    vectors, a token mask with pads (and CLS masked out on the text side)."""
    lengths = rng.integers(2, tokens + 1, count)
    mask = np.arange(tokens)[None, :] < lengths[:, None]
    if first_token_masked:
        mask[:, 0] = False
    lexicon = np.where(rng.random((count, 40)) < 0.3, rng.random((count, 40)), 0.0).astype(np.float32)
    return {
        "global": normalised(rng.normal(size=(count, 6))),
        "lexicon": lexicon,
        "token_embeddings": normalised(rng.normal(size=(count, tokens, 5))),
        "token_mask": mask,
    }


def dense_filip(image_out: dict, text_out: dict) -> tuple[np.ndarray, np.ndarray]:
    """Reference FILIP in float64 loops: s_image[i, j] = mean over i's patches of the best word of j, s_text[i, j] =
    mean over j's words of the best patch of i."""
    num_images, num_texts = len(image_out["global"]), len(text_out["global"])
    s_image, s_text = np.zeros((num_images, num_texts)), np.zeros((num_images, num_texts))
    for i in range(num_images):
        patches = image_out["token_embeddings"][i][image_out["token_mask"][i]].astype(np.float64)
        for j in range(num_texts):
            words = text_out["token_embeddings"][j][text_out["token_mask"][j]].astype(np.float64)
            similarity = patches @ words.T  # [patches, words]
            s_image[i, j] = similarity.max(axis=1).mean()
            s_text[i, j] = similarity.max(axis=0).mean()
    return s_image, s_text


def test_fine_score_on_hand_built_tokens_pairs_each_direction_with_its_filip_similarity():
    # Image 0 has patches e0, e1; image 1 has e2 and a padded patch. Caption 0 says e0 (+ CLS, masked); caption 1
    # says e0, e2 and has a pad.
    e = np.eye(3, dtype=np.float32)
    image_out = {"token_embeddings": np.stack([e[[0, 1]], e[[2, 0]]]), "token_mask": np.array([[1, 1], [1, 0]], bool)}
    text_out = {
        "token_embeddings": np.stack([e[[1, 0, 0]], e[[1, 0, 2]]]),
        "token_mask": np.array([[0, 1, 0], [0, 1, 1]], bool),
    }
    scorer = scores.FineScorer(
        image_out["token_embeddings"],
        image_out["token_mask"],
        text_out["token_embeddings"],
        text_out["token_mask"],
        chunk_size=8,
    )
    result = scorer(np.arange(2), np.arange(2))
    # s_image: mean over the image's real patches of the best word. Image 0 vs caption 0: e0 -> 1, e1 -> 0.
    np.testing.assert_allclose(result.image_to_text, [[0.5, 0.5], [0.0, 1.0]], atol=1e-6)
    # s_text: mean over the caption's real words of the best patch. Caption 1 vs image 0: e0 -> 1, e2 -> 0.
    np.testing.assert_allclose(result.text_to_image, [[1.0, 0.5], [0.0, 0.5]], atol=1e-6)
    # Each direction ranks with its own similarity: image 0 ties its caption with caption 1 under s_image (rank 1,
    # ties count against it); caption 1 ties image 0 and image 1 under s_text.
    image_ranks, caption_ranks = retrieval.retrieval_ranks(scorer, 2, np.array([0, 1]), chunk_size=1)
    np.testing.assert_array_equal(image_ranks, [1, 0])
    np.testing.assert_array_equal(caption_ranks, [0, 1])


def test_hybrid_is_the_weighted_sum_of_scores_divided_by_their_spread():
    a = np.array([[3.0, 1.0], [1.0, 3.0]])  # favours the diagonal, spread 1
    b = np.array([[0.0, 40.0], [40.0, 0.0]])  # favours the anti-diagonal, spread 20
    parts = {"global": lambda r, c: a[np.ix_(r, c)], "lexicon": lambda r, c: b[np.ix_(r, c)]}
    weights = {"global": 1.0, "lexicon": 0.5}
    raw = scores.HybridScorer(parts, weights, "none", 2, 2, sample_size=8)(np.arange(2), np.arange(2))
    np.testing.assert_allclose(raw.image_to_text, a + 0.5 * b)  # the raw sum follows b's scale: anti-diagonal wins
    standardised = scores.HybridScorer(parts, weights, "std", 2, 2, sample_size=8)(np.arange(2), np.arange(2))
    np.testing.assert_allclose(standardised.image_to_text, a / 1.0 + 0.5 * b / 20.0)  # now the diagonal wins
    np.testing.assert_allclose(standardised.text_to_image, standardised.image_to_text)
    image_ranks, _ = retrieval.retrieval_ranks(
        scores.HybridScorer(parts, weights, "std", 2, 2, 8), 2, np.array([0, 1]), chunk_size=1
    )
    np.testing.assert_array_equal(image_ranks, [0, 0])


def test_a_constant_score_adds_nothing_to_a_standardised_hybrid():
    a = np.array([[3.0, 1.0], [1.0, 3.0]])
    parts = {"global": lambda r, c: a[np.ix_(r, c)], "lexicon": lambda r, c: np.full((len(r), len(c)), 7.0)}
    hybrid = scores.HybridScorer(parts, {"global": 1.0, "lexicon": 1.0}, "std", 2, 2, sample_size=8)
    np.testing.assert_allclose(hybrid(np.arange(2), np.arange(2)).image_to_text, a + 7.0)


@pytest.mark.parametrize("chunk_size", [3, 8, 1000])
@pytest.mark.parametrize("score", config_lib.SCORES)
def test_chunked_scoring_equals_the_dense_computation(score, chunk_size):
    rng, caption_image = random_protocol(4, num_images=13, num_captions=29)
    image_out = random_outputs(rng, 13, tokens=4, first_token_masked=False)
    text_out = random_outputs(rng, 29, tokens=5, first_token_masked=True)
    # For the hybrid, one chunk holds every pair, so its std sample is the whole matrix, as in the reference below.
    config = eval_config(batch_size=1000 if score == "hybrid" else chunk_size)
    s_image, s_text = dense_filip(image_out, text_out)
    lexicon = image_out["lexicon"].astype(np.float64) @ text_out["lexicon"].T.astype(np.float64)
    dense = {
        "global": (image_out["global"] @ text_out["global"].T,) * 2,
        "lexicon": (lexicon, lexicon),
        "fine": (s_image, s_text),
    }
    dense["hybrid"] = tuple(
        sum(config.hybrid_weights[p] * dense[p][d] / np.std(dense[p][d]) for p in scores.HYBRID_PARTS) for d in (0, 1)
    )
    score_fn = scores.score_function(score, image_out, text_out, config)
    image_to_text, text_to_image = retrieval.directions(score_fn(np.arange(13), np.arange(29)))
    np.testing.assert_allclose(image_to_text, dense[score][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(text_to_image, dense[score][1], rtol=1e-5, atol=1e-6)
    image_ranks, caption_ranks = retrieval.retrieval_ranks(score_fn, 13, caption_image, chunk_size)
    np.testing.assert_array_equal(image_ranks, dense_ranks(dense[score][0], caption_image)[0])
    np.testing.assert_array_equal(caption_ranks, dense_ranks(dense[score][1], caption_image)[1])


def test_fine_scorer_never_holds_more_than_a_chunk_of_columns_or_rows(monkeypatch):
    rng = np.random.default_rng(5)
    image_out = random_outputs(rng, 20, tokens=3, first_token_masked=False)
    text_out = random_outputs(rng, 30, tokens=4, first_token_masked=True)
    scorer = scores.score_function("fine", image_out, text_out, eval_config(batch_size=8))
    shapes = []
    block = scores._fine_block

    def recording_block(image_tokens, image_mask, text_tokens, text_mask, micro_batch):
        shapes.append((image_tokens.shape[0], text_tokens.shape[0]))
        return block(image_tokens, image_mask, text_tokens, text_mask, micro_batch=micro_batch)

    monkeypatch.setattr(scores, "_fine_block", recording_block)
    result = scorer(np.arange(20), np.arange(30))
    assert max(rows for rows, _ in shapes) <= 8 and max(columns for _, columns in shapes) <= 8
    assert len(shapes) == 3 * 4  # 20 rows in 3 chunks x 30 columns in 4
    np.testing.assert_allclose(result.image_to_text, dense_filip(image_out, text_out)[0], rtol=1e-5, atol=1e-6)


def test_ranks_from_top_k_lists_count_ties_and_mark_misses_as_k():
    list_scores = np.array([[0.9, 0.8, 0.8], [0.9, 0.5, -np.inf], [0.7, 0.6, 0.5]])
    relevant = np.array([[False, True, False], [True, False, False], [False, False, False]])
    # Query 0: one better and one tied non-relevant result -> rank 2; query 1: first -> 0; query 2: not in the list.
    np.testing.assert_array_equal(retrieval.ranks_from_top_k(list_scores, relevant), [2, 0, 3])


def test_censored_ranks_report_no_mean_and_a_median_only_inside_the_lists():
    inside = retrieval.recall_metrics(np.array([0, 1, 10, 2]), np.array([0, 10, 10]), ks=(1, 10), censored_at=10)
    assert inside["text_retrieval_mean_rank"] is None and inside["image_retrieval_mean_rank"] is None
    assert inside["text_retrieval_median_rank"] == 2.5  # middle ranks 1 and 2 are both real
    assert inside["image_retrieval_median_rank"] is None  # the middle caption was not found in its list
    assert inside["text_retrieval_recall@10"] == 75.0
    with pytest.raises(ValueError, match="top-10"):
        retrieval.recall_metrics(np.zeros(2, int), np.zeros(2, int), ks=(1, 20), censored_at=10)


@pytest.mark.parametrize(("retriever", "score"), [("sparse_exact", "lexicon"), ("faiss", "global")])
def test_index_path_gives_the_matrix_paths_recall(retriever, score):
    rng, caption_image = random_protocol(6, num_images=30, num_captions=90)
    image_out = random_outputs(rng, 30, tokens=2, first_token_masked=False)
    text_out = random_outputs(rng, 90, tokens=2, first_token_masked=True)
    # Lean the captions towards their images so that recall is neither 0 nor 100.
    text_out["lexicon"] += 0.5 * image_out["lexicon"][caption_image]
    text_out["global"] = normalised(text_out["global"] + image_out["global"][caption_image])
    config = eval_config(batch_size=16, retriever=retriever)
    matrix_ranks = retrieval.retrieval_ranks(
        scores.score_function(score, image_out, text_out, config), 30, caption_image
    )
    index_ranks = search.index_ranks(retriever, score, image_out, text_out, caption_image, 10, config)
    expected = retrieval.recall_metrics(*matrix_ranks)
    metrics = retrieval.recall_metrics(*index_ranks, censored_at=10)
    for name, value in expected.items():
        if "recall" in name or name == "rsum":
            assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert 0 < expected["text_retrieval_recall@1"] < 100 and 0 < expected["image_retrieval_recall@1"] < 100
    # Inside the lists the ranks are the matrix path's ranks.
    for matrix, index in zip(matrix_ranks, index_ranks):
        np.testing.assert_array_equal(np.minimum(matrix, 10), index)


def test_eval_config_validation_names_the_bad_key():
    cases = {
        "eval.retriever": ("bm25", "eval.retriever='bm25'"),
        "eval.hybrid_normalise": ("zscore", "eval.hybrid_normalise"),
        "eval.zeroshot.dataset": ("imagenet", "tfds:NAME"),
        "eval.zeroshot.templates": (("a photo",), "exactly one"),
        "eval.zeroshot.scores": (("global", "bm25"), "eval.zeroshot.scores"),
        "eval.zeroshot.num_examples": (-1, "num_examples"),
        "eval.seismic.summary_energy": (0.0, r"eval.seismic.summary_energy must lie in \(0, 1\], got 0.0"),
        "eval.seismic.query_cut": (0, "eval.seismic.query_cut must be >= 1"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(config_lib.ConfigError, match=message):
            validation.validate(make_tiny_config(**{key: value}), num_devices=1)
    zero_weights = {"eval.hybrid_weights.global": 0.0, "eval.hybrid_weights.lexicon": 0.0}
    with pytest.raises(config_lib.ConfigError, match="hybrid_weights"):
        validation.validate(make_tiny_config(**zero_weights), num_devices=1)
    validation.validate(make_tiny_config(**{"eval.scores": config_lib.SCORES}), num_devices=1)


def test_seismic_path_takes_its_knobs_from_the_config_and_is_exact_with_full_summaries():
    """eval.seismic reaches the index: one query term and thin summaries miss matches; whole summaries, every query
    term and no heap pruning find the exact lists."""
    pytest.importorskip("seismic")
    rng, caption_image = random_protocol(8, num_images=30, num_captions=90)
    image_out = random_outputs(rng, 30, tokens=2, first_token_masked=False)
    text_out = random_outputs(rng, 90, tokens=2, first_token_masked=True)
    text_out["lexicon"] += 0.5 * image_out["lexicon"][caption_image]
    matrix_ranks = retrieval.retrieval_ranks(
        scores.score_function("lexicon", image_out, text_out, eval_config()), 30, caption_image
    )

    def agreement(**knobs) -> list[float]:
        seismic = config_lib.base_config().eval.seismic
        seismic.update(**knobs)
        config = eval_config(batch_size=16, retriever="seismic", seismic=seismic)
        index_ranks = search.index_ranks("seismic", "lexicon", image_out, text_out, caption_image, 10, config)
        return [np.mean(np.minimum(matrix, 10) == index) for matrix, index in zip(matrix_ranks, index_ranks)]

    assert max(agreement(query_cut=1, summary_energy=0.05, heap_factor=0.1)) < 0.9
    assert agreement(summary_energy=1.0, heap_factor=1.0, query_cut=image_out["lexicon"].shape[1]) == [1.0, 1.0]


def test_compressed_index_path_is_close_to_the_matrix_lexicon_recall():
    rng, caption_image = random_protocol(7, num_images=30, num_captions=90)
    image_out = random_outputs(rng, 30, tokens=2, first_token_masked=False)
    text_out = random_outputs(rng, 90, tokens=2, first_token_masked=True)
    text_out["lexicon"] += 0.5 * image_out["lexicon"][caption_image]
    config = eval_config(batch_size=16, retriever="sparse_compressed")
    matrix_ranks = retrieval.retrieval_ranks(
        scores.score_function("lexicon", image_out, text_out, config), 30, caption_image
    )
    index_ranks = search.index_ranks("sparse_compressed", "lexicon", image_out, text_out, caption_image, 10, config)
    expected = retrieval.recall_metrics(*matrix_ranks)
    metrics = retrieval.recall_metrics(*index_ranks, censored_at=10)
    assert 0 < expected["rsum"] < 600
    # 8-bit weights move a few near-ties; the rank lists agree otherwise.
    assert metrics["rsum"] == pytest.approx(expected["rsum"], abs=10.0)
    for matrix, index in zip(matrix_ranks, index_ranks):
        assert np.mean(np.minimum(matrix, 10) == index) >= 0.9


def test_evaluation_outputs_are_keyed_by_dataset():
    """Training's data keeps W/eval/results.json; other datasets and zero-shot sets each get their own file."""
    from ela_jax.evaluate import keyed_file, results_file

    trained = make_tiny_config().data
    assert results_file(trained, trained) == "results.json"
    coco = make_tiny_config(**{"data.eval_name": "coco", "data.eval_manual_dir": "/data/coco/"}).data
    folder = make_tiny_config(**{"data.eval_name": "folder", "data.eval_manual_dir": "/data/pets"}).data
    assert (results_file(coco, trained), results_file(folder, trained)) == (
        "results_coco.json",
        "results_folder_pets.json",
    )
    names = {keyed_file("zeroshot", d) for d in ("world_colour", "world_shape", "tfds:cifar10")}
    assert names == {"zeroshot_world_colour.json", "zeroshot_world_shape.json", "zeroshot_tfds_cifar10.json"}
    assert keyed_file("zeroshot", "world_shape", "train") == "zeroshot_world_shape_train.json"
