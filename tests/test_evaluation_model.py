"""The evaluator and zero-shot classification on a tiny random model: sharded, padded encoding equals one unsharded
apply; the sparse index path reproduces the matrix path's recall; zero-shot results equal a numpy reference."""

from __future__ import annotations


import jax
import numpy as np
import pytest

from ela_jax.data import pipeline
from ela_jax.evaluation import evaluator, retrieval, zeroshot
from ela_jax.experiment import Experiment
from ela_jax.models.ela import ELAModel
from tests.helpers import make_tiny_config, module_report


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised tiny model with its encoder (chunks of 24: the 64-image test set needs padding)."""
    config = make_tiny_config(**{"eval.batch_size": 24, "data.num_test": 40})
    experiment = Experiment.build(config, str(tmp_path_factory.mktemp("tiny")))
    config = experiment.config
    images, token_ids, mask = np.zeros((1, 32, 32, 3), np.uint8), np.ones((1, 16), np.int32), np.ones((1, 16), bool)
    params = jax.jit(lambda key: experiment.model.init(key, images, token_ids, mask))(jax.random.key(0))["params"]
    return config, experiment, experiment.encoder(params, config.eval.batch_size)


@pytest.mark.integration
def test_chunked_padded_encoding_equals_one_apply_of_the_model(tiny):
    config, experiment, encoder = tiny
    images = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)  # chunks of 24 and 16 + 8 pad
    encoded = encoder.encode_images(images)
    apply = jax.jit(lambda p, x: experiment.model.apply({"params": p}, x, method=ELAModel.encode_image))
    reference = apply(encoder.params, images)
    for key in ("global", "lexicon"):
        np.testing.assert_allclose(encoded[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow  # ~25 s of CPU in a subprocess; test_chunked_padded_encoding_equals_one_apply_of_the_model covers
# chunking and padding on one device
def test_sharded_padded_encoding_equals_one_unsharded_apply(tmp_path):
    report = module_report("tests.sharded_encoding", 2, 2, tmp_path, devices=4, timeout=300)
    assert report["devices"] == 4 and report["batch_size"] == 4  # 11 rows: chunks of 4, 4 and a padded 3
    for key, difference in report["differences"].items():
        if key.endswith("mask_equal"):
            assert difference is True, key
        else:
            assert difference < 1e-5, key


def test_sparse_exact_retriever_gives_the_matrix_lexicon_recall(tiny):
    config, experiment, encoder = tiny
    dataset = pipeline.retrieval_set(config.data, "test")
    config.eval.lexicon_similarity = "dot"
    config.eval.scores = ("lexicon",)
    matrix = evaluator.evaluate_retrieval(encoder, experiment.tokenizer, dataset, config.eval)
    config.eval.retriever = "sparse_exact"
    indexed = evaluator.evaluate_retrieval(encoder, experiment.tokenizer, dataset, config.eval)
    assert matrix["retrievers"] == {"lexicon": "matrix"} and indexed["retrievers"] == {"lexicon": "sparse_exact"}
    for name, value in matrix["scores"]["lexicon"].items():
        if "recall" in name or name == "rsum":
            assert indexed["scores"]["lexicon"][name] == pytest.approx(value, abs=1e-9), name
    assert indexed["scores"]["lexicon"]["text_retrieval_mean_rank"] is None
    assert matrix["scores"]["lexicon"]["rsum"] > 0  # the comparison is not between two zeros


def test_zeroshot_on_the_world_equals_a_numpy_reference(tiny):
    config, experiment, encoder = tiny
    config.eval.zeroshot.num_examples = 48
    config.eval.zeroshot.scores = ("global", "lexicon")  # fine and hybrid: hand-built tests in test_evaluation.py
    dataset = zeroshot.labelled_set(config.eval.zeroshot, config.data, 32)
    assert dataset.images.shape == (48, 32, 32, 3) and dataset.class_names[:2] == ["red", "green"]
    templates = zeroshot.default_templates("world_colour")
    results = zeroshot.evaluate_zeroshot(encoder, experiment.tokenizer, dataset, templates, config.eval)
    assert results["num_classes"] == 8 and results["num_examples"] == 48 and results["skipped"] == 0
    assert set(results["scores"]) == {"global", "lexicon"}
    # Reference: CLIP's ensemble (normalise, average over templates, normalise), argmax per image.
    images = encoder.encode_images(dataset.images)["global"]
    token_ids, mask = experiment.tokenizer.encode(zeroshot.prompts(dataset.class_names, templates))
    prompt_vectors = encoder.encode_tokens(token_ids, mask)["global"].reshape(8, len(templates), -1).mean(axis=1)
    class_scores = images @ retrieval.cosine_normalise(prompt_vectors).T
    ranks = np.array([np.sum(row > row[label]) for row, label in zip(class_scores, dataset.labels)])
    expected_recall = np.mean([np.mean(ranks[dataset.labels == c] == 0) for c in np.unique(dataset.labels)])
    metrics = results["scores"]["global"]
    assert metrics["acc1"] == pytest.approx(100 * np.mean(ranks == 0))
    assert metrics["acc5"] == pytest.approx(100 * np.mean(ranks < 5))
    assert metrics["mean_per_class_recall"] == pytest.approx(100 * expected_recall)
    for score_metrics in results["scores"].values():
        assert 0 <= score_metrics["acc1"] <= score_metrics["acc5"] <= 100
