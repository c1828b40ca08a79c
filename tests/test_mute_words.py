"""The mute-word presence measure (ela_jax/evaluation/mute_words.py) on hand-made arrays, against a plain-Python
reference, and its place in the retrieval evaluator on the cue world."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ela_jax.data import cues, tokenizer
from ela_jax.evaluation import evaluators, mute_words
from tests.helpers import make_tiny_config


def reference_auc(scores: list[float], present: list[bool]) -> float:
    """Every (present, absent) pair, counted one by one: a win 1, a tie 1/2."""
    pairs = [(p, a) for (p, is_p), (a, is_a) in itertools.product(zip(scores, present), repeat=2) if is_p and not is_a]
    return 100.0 * sum(1.0 if p > a else 0.5 if p == a else 0.0 for p, a in pairs) / len(pairs)


def reference_gap(scores: list[float], present: list[bool]) -> float:
    on = [s > 0 for s, p in zip(scores, present) if p]
    off = [s > 0 for s, p in zip(scores, present) if not p]
    return 100.0 * (sum(on) / len(on) - sum(off) / len(off))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_gap_match_a_pair_by_pair_count(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(np.maximum(rng.normal(size=40), 0), 1)  # many exact zeros and ties, as a ReLU lexicon has
    present = rng.random(40) < 0.4
    assert mute_words.presence_auc(scores, present) == pytest.approx(reference_auc(list(scores), list(present)))
    assert mute_words.activation_gap(scores, present) == pytest.approx(reference_gap(list(scores), list(present)))


def test_auc_is_100_for_a_perfect_scorer_50_for_a_constant_and_nan_without_negatives():
    present = np.array([True, False, True, False])
    assert mute_words.presence_auc(np.array([3.0, 1.0, 2.0, 0.0]), present) == 100.0
    assert mute_words.presence_auc(np.zeros(4), present) == 50.0
    assert mute_words.activation_gap(np.array([1.0, 0.0, 0.0, 0.0]), present) == 50.0
    assert math.isnan(mute_words.presence_auc(np.ones(3), np.ones(3, bool)))
    assert math.isnan(mute_words.activation_gap(np.ones(3), np.zeros(3, bool)))


def test_a_word_that_counts_glyphs_beats_chance_plainly_but_scores_50_against_images_of_the_same_count():
    rng = np.random.default_rng(5)
    present = rng.random(400) < 0.5
    counts = rng.integers(1, 3, 400) + present  # the mute object is one glyph more
    by_count = counts + rng.normal(0, 0.1, 400)  # knows how many glyphs, not which
    assert mute_words.presence_auc(by_count, present) > 70
    assert mute_words.matched_auc(by_count, present, counts) == pytest.approx(50.0, abs=6)
    knows = present + rng.normal(0, 0.1, 400)
    assert mute_words.matched_auc(knows, present, counts) == 100.0


@pytest.mark.parametrize("seed", [0, 1])
def test_the_matched_auc_counts_only_pairs_within_a_stratum(seed):
    rng = np.random.default_rng(seed)
    scores, present, strata = rng.integers(0, 4, 30).astype(float), rng.random(30) < 0.5, rng.integers(0, 3, 30)
    pairs = [
        (1.0 if a > b else 0.5 if a == b else 0.0)
        for a, pa, sa in zip(scores, present, strata)
        for b, pb, sb in zip(scores, present, strata)
        if pa and not pb and sa == sb
    ]
    assert mute_words.matched_auc(scores, present, strata) == pytest.approx(100.0 * sum(pairs) / len(pairs))


def test_each_mute_word_is_scored_on_its_own_scenes_images_only():
    count, vocab = 6 * len(cues.CUES), 8
    scene = np.repeat(np.arange(len(cues.CUES)), 6)
    present = np.zeros((count, len(cues.CUES)), bool)
    mute_ids, cue_ids = list(range(len(cues.CUES))), [6] * len(cues.CUES)
    lexicon = np.zeros((count, vocab))
    for m, mute_scene in enumerate(cues.MUTE_SCENE):
        rows = np.flatnonzero(scene == mute_scene)
        present[rows[:3], m] = True
        lexicon[rows[:3], m] = 1.0  # found exactly on its own scene's images
        lexicon[rows[:3], 6] = rows[:3] % 2  # the cue column: half right
    # Images of other scenes with the word active and no mute object: the scene-restricted measure ignores them.
    lexicon[:, 0] += (scene != cues.MUTE_SCENE[0]) * 5.0
    global_scores = -lexicon[:, : len(cues.CUES)]  # a global scorer that has it backwards
    counts = np.ones(count, np.int64)
    results = mute_words.mute_word_metrics(lexicon, global_scores, scene, present, mute_ids, cue_ids, counts)
    for word in cues.MUTE_WORDS:
        metrics = results["words"][word]
        assert (metrics["lexicon_auc"], metrics["lexicon_gap"], metrics["global_auc"]) == (100.0, 100.0, 0.0)
        assert (metrics["num_present"], metrics["num_absent"]) == (3, 3)
        own = np.flatnonzero(scene == cues.MUTE_SCENE[cues.MUTE_WORDS.index(word)])
        assert metrics["cue_auc"] == pytest.approx(reference_auc(list(lexicon[own, 6]), list(present[own].any(1))))
    assert results["mean"]["lexicon_auc"] == 100.0


class TableEncoder:
    """An encoder whose image outputs are given arrays and whose text embeddings are fixed per token."""

    def __init__(self, image_lexicon: np.ndarray, image_global: np.ndarray, text_global: dict[int, np.ndarray]):
        self.image_lexicon, self.image_global, self.text_global = image_lexicon, image_global, text_global

    def encode_images(self, images):
        assert len(images) == len(self.image_lexicon)
        return {"lexicon": self.image_lexicon, "global": self.image_global}

    def encode_tokens(self, token_ids, mask):
        last_words = token_ids[np.arange(len(token_ids)), mask.sum(1) - 2]  # the prompt's last word, before [SEP]
        return {"global": np.stack([self.text_global[int(word)] for word in last_words])}


def test_the_measure_reads_the_mute_and_cue_columns_of_the_world_vocabulary(tmp_path):
    words = tokenizer.from_config(make_tiny_config().tokenizer, str(tmp_path), "cues")
    count = 4 * len(cues.CUES)
    scene = np.repeat(cues.MUTE_SCENE, 4)
    present = np.tile([True, True, False, False], len(cues.CUES))[:, None] & (scene[:, None] == cues.MUTE_SCENE[None])
    lexicon = np.zeros((count, words.vocab_size), np.float32)
    for m, (mute, cue) in enumerate(zip(cues.MUTE_WORDS, cues.CUE_WORDS)):
        lexicon[present[:, m], words.token_to_id(mute)] = 1.0
        lexicon[:, words.token_to_id(cue)] = 1.0  # never separates: AUC 50, gap 0
    # The global embedding points at the image's mute word when present, at another one when absent.
    basis = np.eye(len(cues.CUES), dtype=np.float32)
    own_word = np.repeat(np.arange(len(cues.CUES)), 4)
    image_global = basis[np.where(present.any(1), own_word, (own_word + 1) % len(cues.CUES))]
    text_global = {words.token_to_id(w): basis[m] for m, w in enumerate(cues.MUTE_WORDS)}
    counts = np.ones(count, np.int64)
    annotations = mute_words.MuteAnnotations(np.zeros((count, 2, 2, 3), np.uint8), scene, present, counts)
    results = mute_words.evaluate_mute_words(TableEncoder(lexicon, image_global, text_global), words, annotations)
    assert results["num_images"] == count
    assert results["mean"]["lexicon_auc"] == 100.0 and results["mean"]["lexicon_gap"] == 100.0
    assert results["mean"]["cue_auc"] == 50.0 and results["mean"]["cue_gap"] == 0.0
    assert results["mean"]["global_auc"] == 100.0


def test_the_retrieval_evaluator_measures_mute_words_on_the_cue_world_only():
    cue_config = make_tiny_config(**{"data.world": "cues"})
    scenes_config = make_tiny_config(**{"data.world": "scenes"})
    assert mute_words.applies(cue_config.data) and not mute_words.applies(scenes_config.data)
    evaluator = evaluators.RetrievalEvaluator(cue_config, tokenizer=None)
    assert evaluator.mute_words is not None and evaluator.unnamed is not None
    assert evaluators.RetrievalEvaluator(scenes_config, tokenizer=None).mute_words is None


@pytest.mark.integration
def test_mute_word_maps_show_each_mute_word_on_an_image_of_its_scene_that_holds_it(tmp_path):
    from PIL import Image

    from ela_jax.retrieval import heatmap
    from ela_jax.training import loop

    overrides = {"data.world": "cues", "total_steps": 2, "checkpoint.every_steps": 2, "data.num_test": 96}
    workdir = str(tmp_path / "cues")
    loop.train(make_tiny_config(**overrides), workdir)
    paths = heatmap.write_mute_word_maps({"expansive": workdir, "beta = 0": workdir}, str(tmp_path / "maps"))
    annotations = mute_words.load_annotations(make_tiny_config(**overrides).data)
    assert len(paths) == len(cues.MUTE_WORDS)
    for m, (word, path) in enumerate(zip(cues.MUTE_WORDS, paths)):
        image_index = int(path.rsplit("_", 1)[1].removesuffix(".png"))
        assert f"mute_word_{word}_" in path
        assert annotations.present[image_index, m] and annotations.scene[image_index] == cues.MUTE_SCENE[m]
        with Image.open(path) as png:
            assert png.format == "PNG"
    scenes_run = str(tmp_path / "scenes")
    loop.train(make_tiny_config(**{**overrides, "data.world": "scenes"}), scenes_run)
    with pytest.raises(ValueError, match="not trained on the cue world"):
        heatmap.write_mute_word_maps({"a": workdir, "b": scenes_run}, str(tmp_path / "maps"))


def test_a_word_patch_map_is_its_column_of_patch_logits_through_the_relu_and_its_lexicon_weight(tmp_path):
    from ela_jax.retrieval import patch_maps

    words = tokenizer.from_config(make_tiny_config().tokenizer, str(tmp_path), "cues")
    token = words.token_to_id("knife")
    vocab_logits = np.random.default_rng(4).normal(size=(16, words.vocab_size)).astype(np.float32)
    lexicon = np.log1p(np.maximum(vocab_logits.max(0), 0.0))
    word_map = patch_maps.word_patch_map(vocab_logits, lexicon, words, token, in_caption=False)
    assert word_map.word == "knife" and word_map.weight == pytest.approx(lexicon[token])
    np.testing.assert_array_equal(word_map.patch_activation, np.maximum(vocab_logits[:, token], 0).reshape(4, 4))
    assert word_map.best_patch == divmod(int(np.argmax(vocab_logits[:, token])), 4)
