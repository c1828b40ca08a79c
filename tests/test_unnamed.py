"""The unnamed-object measure: hand-made cases, a loop reference, and the entry on an oracle encoder."""

from __future__ import annotations

import numpy as np
import pytest

from ela_jax.data import scenes, tokenizer
from ela_jax.evaluation import unnamed


def masks(present_ids, named_ids, count):
    present = np.zeros((len(present_ids), count), bool)
    named = np.zeros_like(present)
    for row, (p, n) in enumerate(zip(present_ids, named_ids)):
        present[row, p], named[row, n] = True, True
    return present, named


def test_object_ranking_on_a_hand_made_image():
    # Objects 0-2 present, 0 named; unnamed 1 (score 5) and 2 (score 1); absent 3 (score 3) and 4 (score 0).
    present, named = masks([[0, 1, 2]], [[0]], 5)
    metrics = unnamed.object_ranking_metrics(np.array([[9.0, 5, 1, 3, 0]]), present, named, ks=(1, 2, 5))
    assert metrics["auc"] == pytest.approx(75.0)  # 3 of the 4 (unnamed, absent) pairs in order
    # Candidate order (named 0 left out): 1, 3, 2, 4.
    assert metrics["recall@1"] == pytest.approx(100.0)  # 1 hit of min(1, 2)
    assert metrics["recall@2"] == pytest.approx(50.0)
    assert metrics["recall@5"] == pytest.approx(100.0)
    assert metrics["num_images"] == 1


def test_ties_count_half_in_auc_and_against_the_model_in_recall():
    present, named = masks([[0, 1]], [[0]], 6)
    metrics = unnamed.object_ranking_metrics(np.zeros((1, 6)), present, named, ks=(1, 4))
    assert metrics["auc"] == pytest.approx(50.0)
    assert metrics["recall@1"] == 0.0 and metrics["recall@4"] == 0.0


def test_images_without_an_unnamed_object_are_left_out():
    present, named = masks([[0, 1], [2, 3]], [[0, 1], [2]], 5)
    scores = np.array([[0.0, 0, 9, 9, 9], [0, 0, 0, 1, 0]])
    metrics = unnamed.object_ranking_metrics(scores, present, named)
    assert metrics["num_images"] == 1 and metrics["auc"] == pytest.approx(100.0)


def reference_ranking(scores, present, named, k):
    """Loop transcription: sort the candidates (best first, unnamed after absent on ties) and count."""
    aucs, recalls = [], []
    for row, p, n in zip(scores, present, named):
        candidates = [o for o in range(len(row)) if not n[o]]
        positives = [o for o in candidates if p[o]]
        negatives = [o for o in candidates if not p[o]]
        if not positives or not negatives:
            continue
        pairs = [1.0 if row[u] > row[a] else 0.5 if row[u] == row[a] else 0.0 for u in positives for a in negatives]
        aucs.append(np.mean(pairs))
        order = sorted(candidates, key=lambda o: (-row[o], bool(p[o])))
        recalls.append(sum(o in positives for o in order[:k]) / min(k, len(positives)))
    return 100 * np.mean(aucs), 100 * np.mean(recalls)


def test_object_ranking_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    count = 12
    present = rng.random((40, count)) < 0.3
    named = present & (rng.random((40, count)) < 0.5)
    scores = rng.integers(0, 4, size=(40, count)).astype(float)  # many ties
    for k in (1, 3):
        metrics = unnamed.object_ranking_metrics(scores, present, named, ks=(k,))
        auc, recall = reference_ranking(scores, present, named, k)
        assert metrics["auc"] == pytest.approx(auc) and metrics[f"recall@{k}"] == pytest.approx(recall)


def test_query_relevance_needs_every_named_object():
    queries = np.array([[1, 1, 0], [0, 0, 1]], bool)
    present = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0]], bool)
    np.testing.assert_array_equal(unnamed.query_relevance(queries, present), [[1, 0, 0], [1, 1, 0]])


def test_query_recall_counts_irrelevant_images_at_least_as_high():
    similarity = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.3], [0.4, 0.4, 0.4]])
    relevant = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], bool)
    metrics = unnamed.query_recall(similarity, relevant, ks=(1, 2, 3))
    # Ranks: query 0 -> 1, query 1 -> 2 (0.3 above, 0.2 tied), query 2 -> 2 (two ties).
    assert metrics == pytest.approx({"query_recall@1": 0.0, "query_recall@2": 100 / 3, "query_recall@3": 100.0})


class OracleEncoder:
    """Scores exactly what is in the image: image i is stored as its index in the pixels; its lexicon and global
    vector are the multi-hot of its present objects; a text's are the multi-hot of the object words it contains."""

    def __init__(self, present: np.ndarray, tok: tokenizer.Tokenizer):
        self.present, self.tok = present, tok
        self.word_ids = np.array([tok.token_to_id(w) for w in scenes.OBJECT_NAMES])

    def _outputs(self, objects: np.ndarray) -> dict:
        lexicon = np.zeros((len(objects), self.tok.vocab_size), np.float32)
        lexicon[:, self.word_ids] = objects
        return {"global": objects.astype(np.float32) + 1e-3, "lexicon": lexicon}

    def encode_images(self, images):
        return self._outputs(self.present[images[:, 0, 0, 0].astype(int)])

    def encode_tokens(self, token_ids, mask):
        hits = (token_ids[:, :, None] == self.word_ids[None, None, :]) & mask[:, :, None]
        return self._outputs(hits.any(1))


def test_an_oracle_encoder_finds_every_unnamed_object(tmp_path):
    from tests.helpers import make_tiny_config

    examples = [scenes.generate_example(scenes.ScenesSpec(), "test", i) for i in range(60)]
    count = len(scenes.OBJECT_NAMES)
    present, named = masks([e.present for e in examples], [e.named for e in examples], count)
    images = np.arange(len(examples), dtype=np.uint8).reshape(-1, 1, 1, 1)
    scene = np.asarray([e.scene for e in examples], np.int64)
    annotations = unnamed.ObjectAnnotations(images=images, present=present, named=named, scene=scene)
    tok = tokenizer.from_config(make_tiny_config().tokenizer, str(tmp_path), "scenes")
    results = unnamed.evaluate_unnamed(OracleEncoder(present, tok), tok, annotations, make_tiny_config().eval)
    assert results["num_images"] == 60
    for variant in unnamed.VARIANTS:
        metrics = results[variant]
        assert metrics["auc"] == pytest.approx(100.0) and metrics["recall@1"] == pytest.approx(100.0), variant
        assert metrics["query_recall@1"] == pytest.approx(100.0), variant
        assert metrics["auc_within_scene"] == pytest.approx(100.0), variant


def test_a_scorer_that_knows_only_the_scene_is_at_chance_within_the_scene():
    """It scores a word 1 when the word belongs to the image's scene: high on the plain AUC (most negatives are other
    scenes' objects), exactly 50 within the scene."""
    examples = [scenes.generate_example(scenes.ScenesSpec(), "test", i) for i in range(200)]
    present, named = masks([e.present for e in examples], [e.named for e in examples], len(scenes.OBJECT_NAMES))
    scene = np.asarray([e.scene for e in examples], np.int64)
    annotations = unnamed.ObjectAnnotations(images=None, present=present, named=named, scene=scene)
    scene_scores = annotations.in_scene().astype(np.float64)
    assert unnamed.object_ranking_metrics(scene_scores, present, named)["auc"] > 80.0
    within = unnamed.object_ranking_metrics(scene_scores, present, named, candidates=annotations.in_scene())
    assert within["auc"] == pytest.approx(50.0) and within["num_images"] > 100


# Trains on the scenes world; tests/test_evaluators.py runs the evaluators in the loop and the tests above check the
# measure itself, so the default run keeps their faster twin.
@pytest.mark.slow
@pytest.mark.integration
def test_training_on_the_scenes_world_reports_the_measure(tmp_path):
    import json
    import os

    from ela_jax.training import loop
    from tests.helpers import make_tiny_config

    overrides = {"data.world": "scenes", "total_steps": 2, "batch_size": 8, "data.num_train": 16, "data.num_test": 12}
    config = make_tiny_config(**overrides, **{"checkpoint.every_steps": 0, "log.every_steps": 1})
    loop.train(config, str(tmp_path))
    with open(os.path.join(tmp_path, "eval", "results.json")) as f:
        measure = json.load(f)["unnamed_objects"]
    assert measure["num_images"] == 12
    for variant in unnamed.VARIANTS:
        assert 0.0 <= measure[variant]["auc"] <= 100.0 and 0.0 <= measure[variant]["query_recall@10"] <= 100.0
