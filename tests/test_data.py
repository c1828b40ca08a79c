"""The embedded world (deterministic, partial captions), its TFDS builder, and the grain pipeline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ela_jax.data import pipeline, tokenizer, world


def test_world_is_a_pure_function_of_seed_split_and_index():
    spec = world.WorldSpec(seed=3)
    image_a, captions_a = world.generate_example(spec, "train", 7)
    image_b, captions_b = world.generate_example(spec, "train", 7)
    np.testing.assert_array_equal(image_a, image_b)
    assert captions_a == captions_b
    other_seed, _ = world.generate_example(world.WorldSpec(seed=4), "train", 7)
    other_split, _ = world.generate_example(spec, "test", 7)
    assert not np.array_equal(image_a, other_seed) and not np.array_equal(image_a, other_split)


def test_captions_name_only_objects_that_are_in_the_image_and_not_all_of_them():
    spec = world.WorldSpec(seed=0)
    colour_of_word = {w: name for name, (words, _) in world.COLOURS.items() for w in words}
    shape_of_word = {w: name for name, words in world.SHAPES.items() for w in words}
    partial_captions = colourless_captions = 0
    for index in range(50):
        rng = world._example_rng(spec, "train", index)
        objects = world.sample_objects(rng, spec)
        world.render_image(rng, objects, spec.image_size)
        captions = world.write_captions(rng, objects, spec.captions_per_image)
        for caption in captions:
            words = caption.split()
            shape_words = [shape_of_word[w] for w in words if w in shape_of_word]
            colours = {colour_of_word[w] for w in words if w in colour_of_word}
            assert shape_words and set(shape_words) <= {obj.shape for obj in objects}, (caption, objects)
            assert colours <= {obj.colour for obj in objects}, (caption, objects)
            partial_captions += len(shape_words) < len(objects)
            colourless_captions += not colours
    assert partial_captions > 100  # most captions leave some object unnamed: the information asymmetry
    assert 0 < colourless_captions < 125  # some captions name a shape alone, so colour cannot match every caption


def test_world_vocabulary_covers_every_caption_word():
    words = set(world.vocabulary_words())
    for index in range(30):
        _, captions = world.generate_example(world.WorldSpec(), "test", index)
        assert {w for c in captions for w in c.split()} <= words


def test_images_hold_visible_objects():
    image, _ = world.generate_example(world.WorldSpec(image_size=32), "train", 0)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image.max() > 150 and image.std() > 20


def centred_shape_masks(image_size: int, size: str) -> dict[str, np.ndarray]:
    """Each shape's pixels when drawn at `size` in the middle of an image_size-px picture, without jitter."""
    radius = image_size / world.GRID * world.RADII[size]
    coords = np.arange(image_size) + 0.5 - image_size / 2
    return {shape: world._shape_mask(shape, coords[:, None], coords[None, :], radius) for shape in world.SHAPES}


@pytest.mark.parametrize("size", list(world.SIZES))
def test_every_demo_shape_crosses_patch_borders_and_differs_from_the_others(size):
    # A shape inside one patch would reach the image tower as a single patch of colour: the demo could learn
    # colour words but not shape words. Two shapes differing in a sliver of pixels would look alike to it.
    from configs import demo

    config = demo.get_config()
    image_size, patch = config.data.image_size, config.model.image.patch_size
    masks = centred_shape_masks(image_size, size)
    for shape, mask in masks.items():
        rows, cols = np.nonzero(mask)
        assert max(np.ptp(rows), np.ptp(cols)) + 1 > patch, shape  # wider than a patch: crosses a border anywhere
    for first, second in itertools.combinations(masks, 2):
        assert np.sum(masks[first] ^ masks[second]) >= patch**2 / 4, (first, second)


def test_tokenizer_truncates_huge_and_encodes_empty_captions(tmp_path):
    tok = tokenizer.Tokenizer(tokenizer.write_world_vocab(str(tmp_path / "vocab.txt")), max_length=8)
    token_ids, mask = tok.encode(["red " * 100_000, "", "a crimson disc"])
    assert token_ids.shape == (3, 8) and mask.shape == (3, 8)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert token_ids[0, 0] == cls and token_ids[0, -1] == sep and mask[0].all()
    assert list(token_ids[1, :2]) == [cls, sep] and mask[1].sum() == 2
    content = tok.content_vocab(drop_stopwords=True)
    assert content[tok.token_to_id("crimson")] == 1 and content[tok.token_to_id("a")] == 0
    assert content[[tok.token_to_id(t) for t in tokenizer.SPECIAL_TOKENS]].sum() == 0


def test_bert_vocabulary_ships_offline():
    tok = tokenizer.Tokenizer(tokenizer.bert_base_uncased_vocab(), max_length=12)
    assert tok.vocab_size == 30522 and tok.special_ids == (0, 100, 101, 102, 103)
    content = tok.content_vocab(drop_stopwords=False)
    assert content[tok.token_to_id("[unused5]")] == 0


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from tests.helpers import make_tiny_config

    config = make_tiny_config(**{"data.num_train": 40, "data.num_test": 12, "batch_size": 8})
    workdir = str(tmp_path_factory.mktemp("vocab"))
    return config, tokenizer.from_config(config.tokenizer, workdir)


def test_tfds_builder_writes_every_split_with_five_captions(small_world):
    config, _ = small_world
    train = pipeline.data_source(config.data, "train")
    test = pipeline.data_source(config.data, "test")
    assert len(train) == 40 and len(test) == 12
    record = test[3]
    image, captions = world.generate_example(world.WorldSpec(seed=config.data.seed), "test", int(record["image_id"]))
    np.testing.assert_array_equal(record["image"], image)
    assert [c.decode() if isinstance(c, bytes) else c for c in record["captions"]] == captions


def test_retrieval_set_groups_five_captions_per_image(small_world):
    config, _ = small_world
    dataset = pipeline.retrieval_set(config.data, "test")
    assert dataset.images.shape == (12, 32, 32, 3)
    assert len(dataset.captions) == 60
    np.testing.assert_array_equal(np.bincount(dataset.caption_image), np.full(12, 5))


def take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def test_train_stream_is_deterministic_and_resumes_from_its_state(small_world):
    config, tok = small_world
    first = iter(pipeline.train_dataset(config, tok, 0, 1))
    batches = take(first, 3)
    assert batches[0]["images"].shape == (8, 32, 32, 3) and batches[0]["token_ids"].shape == (8, 16)
    state = first.get_state()
    after = take(first, 4)  # crosses the 40-image epoch boundary
    again = iter(pipeline.train_dataset(config, tok, 0, 1))
    for expected, actual in zip(batches, take(again, 3)):
        np.testing.assert_array_equal(expected["images"], actual["images"])
        np.testing.assert_array_equal(expected["token_ids"], actual["token_ids"])
    resumed = iter(pipeline.train_dataset(config, tok, 0, 1))
    resumed.set_state(state)
    for expected, actual in zip(after, take(resumed, 4)):
        np.testing.assert_array_equal(expected["images"], actual["images"])
        np.testing.assert_array_equal(expected["token_ids"], actual["token_ids"])


def test_hosts_read_disjoint_shards(small_world):
    config, tok = small_world
    config = config.copy_and_resolve_references()
    seen = []
    for process in range(2):
        stream = iter(pipeline.train_dataset(config, tok, process, 2))
        images = np.concatenate([b["images"] for b in take(stream, 5)])  # 5 x 4 = one 20-image epoch per host
        seen.append({img.tobytes() for img in images})
    assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]
