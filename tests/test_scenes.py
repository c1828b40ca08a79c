"""The scenes world: deterministic, every image has unnamed objects, the scene word predicts them, and its records
round-trip through the TFDS builder."""

from __future__ import annotations

import numpy as np
import pytest

from ela_jax import validation
from ela_jax.data import pipeline, scenes, tokenizer, world_tfds
from ela_jax.errors import ConfigError


def examples(split: str, count: int, seed: int = 0) -> list[scenes.SceneExample]:
    return [scenes.generate_example(scenes.ScenesSpec(seed=seed), split, index) for index in range(count)]


def test_scenes_are_a_pure_function_of_seed_split_and_index():
    spec = scenes.ScenesSpec(seed=3)
    first, again = scenes.generate_example(spec, "train", 7), scenes.generate_example(spec, "train", 7)
    np.testing.assert_array_equal(first.image, again.image)
    assert (first.captions, first.scene, first.present, first.named) == (
        again.captions,
        again.scene,
        again.present,
        again.named,
    )
    other_seed = scenes.generate_example(scenes.ScenesSpec(seed=4), "train", 7)
    other_split = scenes.generate_example(spec, "test", 7)
    assert not np.array_equal(first.image, other_seed.image) and not np.array_equal(first.image, other_split.image)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_image_has_an_object_no_caption_names(split):
    vocabulary = set(scenes.vocabulary_words())
    for example in examples(split, 200):
        caption_words = {w for c in example.captions for w in c.split()}
        assert caption_words <= vocabulary
        named_by_words = {o for o in example.present if scenes.OBJECT_NAMES[o] in caption_words}
        assert set(example.named) == named_by_words and example.named
        assert len(set(example.present) - set(example.named)) >= 1, example
        # No caption names an object that is not in the image.
        assert caption_words & set(scenes.OBJECT_NAMES) == {scenes.OBJECT_NAMES[o] for o in example.named}


def test_a_scene_word_predicts_the_objects_its_captions_leave_out():
    scene_of_object = scenes.OBJECT_SCENE
    unnamed_in_scene, unnamed_total, scene_in_captions, captions_total = 0, 0, 0, 0
    present = np.zeros((len(scenes.SCENE_NAMES), len(scenes.OBJECT_NAMES)))
    for example in examples("train", 600):
        unnamed = set(example.present) - set(example.named)
        unnamed_in_scene += sum(scene_of_object[o] == example.scene for o in unnamed)
        unnamed_total += len(unnamed)
        scene_word = scenes.SCENE_NAMES[example.scene]
        scene_in_captions += sum(scene_word in c.split() for c in example.captions)
        captions_total += len(example.captions)
        present[example.scene, list(example.present)] += 1
    assert unnamed_in_scene / unnamed_total > 0.85
    assert scene_in_captions / captions_total > 0.6  # the scene word is named often
    # P(object present | scene): each of the scene's own objects far more often than any object of another scene.
    rate = present / present.sum(axis=1, keepdims=True).clip(1) * 3  # roughly per image (3 objects on average)
    own = rate[scene_of_object, np.arange(len(scenes.OBJECT_NAMES))]
    other = np.where(np.arange(len(scenes.SCENE_NAMES))[:, None] != scene_of_object[None, :], rate, 0.0)
    assert own.min() > 0.35 and other.max() < 0.08, (own.min(), other.max())


def test_captions_mostly_leave_background_objects_out():
    named, present = np.zeros(len(scenes.OBJECT_NAMES)), np.zeros(len(scenes.OBJECT_NAMES))
    for example in examples("train", 600):
        present[list(example.present)] += 1
        named[list(example.named)] += 1
    rate = named / present
    assert rate[scenes.OBJECT_SALIENT].min() > 0.6 and rate[~scenes.OBJECT_SALIENT].max() < 0.3, rate


def test_glyphs_are_distinct_and_differ_within_a_scene():
    assert len(set(scenes.GLYPHS)) == len(scenes.OBJECT_NAMES)
    for scene in range(len(scenes.SCENE_NAMES)):
        glyphs = [scenes.GLYPHS[o] for o in np.flatnonzero(scenes.OBJECT_SCENE == scene)]
        assert len({shape for shape, _ in glyphs}) == len({colour for _, colour in glyphs}) == len(glyphs)


def test_scene_and_object_words_are_single_words_a_pretrained_english_model_knows():
    bert = tokenizer.Tokenizer(tokenizer.bert_base_uncased_vocab(), max_length=4)
    for word in scenes.SCENE_NAMES + scenes.OBJECT_NAMES:
        token_ids, mask = bert.encode([word])
        assert mask.sum() == 3 and bert.id_to_token(token_ids[0, 1]) == word  # [CLS] word [SEP]


def test_scene_backgrounds_differ_and_objects_stand_out():
    means = {}
    for example in examples("train", 120):
        corner = example.image[:2, :2].reshape(-1, 3).astype(np.float64)  # the grid cells' glyphs leave corners clear
        means.setdefault(example.scene, []).append(corner.mean(0))
    centres = np.stack([np.mean(means[s], axis=0) for s in sorted(means)])
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert distances[~np.eye(len(centres), dtype=bool)].min() > 15
    assert max(example.image.max() for example in examples("test", 10)) > 200


def scenes_config(**overrides):
    from tests.helpers import make_tiny_config

    return make_tiny_config(**{"data.world": "scenes", "data.num_train": 24, "data.num_test": 10, **overrides})


def test_builder_round_trips_scenes_with_padded_object_ids():
    config = scenes_config()
    test = pipeline.data_source(config.data, "test")
    assert len(test) == 10 and len(pipeline.data_source(config.data, "train")) == 24
    for index in (0, 9):
        record = test[index]
        example = scenes.generate_example(scenes.ScenesSpec(seed=config.data.seed), "test", int(record["image_id"]))
        np.testing.assert_array_equal(record["image"], example.image)
        assert [c.decode() for c in record["captions"]] == example.captions
        assert int(record["scene"]) == example.scene
        np.testing.assert_array_equal(record["objects_present"], scenes.padded(example.present))
        np.testing.assert_array_equal(record["objects_named"], scenes.padded(example.named))
        assert record["objects_present"].shape == (scenes.MAX_OBJECTS,)


def test_the_two_worlds_never_share_a_prepared_copy():
    config = scenes_config()
    shapes = scenes_config(**{"data.world": "shapes"})
    scene_builder = world_tfds.world_builder(config.data, prepare=False)
    shape_builder = world_tfds.world_builder(shapes.data, prepare=False)
    assert scene_builder.data_dir != shape_builder.data_dir
    assert "objects_present" in scene_builder.info.features and "objects_present" not in shape_builder.info.features


def test_world_vocabulary_follows_data_world(tmp_path):
    config = scenes_config()
    scene_tokenizer = tokenizer.from_config(config.tokenizer, str(tmp_path / "scenes"), config.data.world)
    shapes_tokenizer = tokenizer.from_config(config.tokenizer, str(tmp_path / "shapes"), "shapes")
    assert scene_tokenizer.vocab_size == len(tokenizer.SPECIAL_TOKENS) + len(scenes.vocabulary_words())
    assert scene_tokenizer.token_to_id("kitchen") > 0
    with pytest.raises(ValueError):
        shapes_tokenizer.token_to_id("kitchen")


def test_an_unknown_world_is_a_config_error():
    config = scenes_config(**{"data.world": "forest"})
    with pytest.raises(ConfigError, match="data.world"):
        validation.validate(config, num_devices=1)
