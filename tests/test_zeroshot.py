"""Zero-shot classification: hand-built embeddings with known answers, prompt averaging over templates, ties, and
labelled sets from the embedded world and from a TF-free TFDS ArrayRecord dataset."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ela_jax.data import world
from ela_jax.evaluation import zeroshot

EVAL_CONFIG = types.SimpleNamespace(
    batch_size=2, lexicon_similarity="cosine", hybrid_weights={"global": 1.0, "lexicon": 1.0, "fine": 0.0}
)


def hand_built_outputs() -> tuple[dict, dict, np.ndarray]:
    """3 classes x 2 templates: class c's prompts point at axis c, except that class 2's second one leans to axis 0.
    Images 0-3 are nearest their own class; image 4 (label 2) lies between classes 1 and 2 and lands on class 1."""
    axes = np.eye(3)
    prompts = np.stack(
        [axes[0], axes[0], axes[1], axes[1], axes[2], (axes[2] + 0.9 * axes[0]) / np.linalg.norm([1, 0.9])]
    )
    images = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 1.0], [0.6, 0.0, 0.8], [0.0, 0.7, 0.71]])
    images = images / np.linalg.norm(images, axis=-1, keepdims=True)
    labels = np.array([0, 1, 2, 2, 2])
    return {"global": images, "lexicon": np.abs(images)}, {"global": prompts, "lexicon": np.abs(prompts)}, labels


def test_prompts_are_class_major():
    assert zeroshot.prompts(["red", "blue"], ("a {}", "the {} one")) == [
        "a red",
        "the red one",
        "a blue",
        "the blue one",
    ]


def test_hand_built_embeddings_give_the_known_accuracy():
    image_out, prompt_out, labels = hand_built_outputs()
    score_fn = zeroshot.class_score_function("global", image_out, prompt_out, 3, EVAL_CONFIG)
    ranks = zeroshot.label_ranks(score_fn, labels, 3, chunk_size=2)
    # The classifier is CLIP's ensemble: prompts averaged over templates, normalised, dotted with the image.
    class_vectors = np.stack([prompt_out["global"][2 * c : 2 * c + 2].mean(0) for c in range(3)])
    class_vectors /= np.linalg.norm(class_vectors, axis=-1, keepdims=True)
    reference = image_out["global"] @ class_vectors.T
    np.testing.assert_array_equal(ranks, [np.sum(row > row[label]) for row, label in zip(reference, labels)])
    np.testing.assert_array_equal(ranks, [0, 0, 0, 0, 1])  # image 4: class 1 (0.702) beats class 2 (0.665)
    metrics = zeroshot.classification_metrics(ranks, labels, 3)
    assert metrics == {"acc1": 80.0, "acc5": 100.0, "mean_per_class_recall": pytest.approx(100 * (1 + 1 + 2 / 3) / 3)}


def test_tied_class_scores_count_against_the_model():
    images = np.ones((4, 2)) / np.sqrt(2)
    prompts = np.ones((3, 2)) / np.sqrt(2)  # three classes, one template, all the same prompt
    score_fn = zeroshot.class_score_function("global", {"global": images}, {"global": prompts}, 3, EVAL_CONFIG)
    ranks = zeroshot.label_ranks(score_fn, np.array([0, 1, 2, 0]), 3, chunk_size=3)
    np.testing.assert_array_equal(ranks, [2, 2, 2, 2])
    metrics = zeroshot.classification_metrics(ranks, np.array([0, 1, 2, 0]), 3)
    assert metrics["acc1"] == 0.0 and metrics["acc5"] == 100.0  # top-5 of 3 classes always holds the label


def test_world_labelled_sets_show_the_labelled_colour_and_shape():
    data_config = types.SimpleNamespace(seed=0, image_size=32)
    colours = zeroshot.world_labelled_set("colour", data_config, "test", 40)
    shapes = zeroshot.world_labelled_set("shape", data_config, "test", 40)
    assert colours.class_names == list(world.COLOURS) and shapes.class_names == list(world.SHAPES)
    np.testing.assert_array_equal(colours.images, shapes.images)  # the same images, labelled two ways
    assert len(np.unique(colours.labels)) >= 6 and len(np.unique(shapes.labels)) >= 5
    for image, label in zip(colours.images, colours.labels):
        # The object's pixels are the ones far from the dark background; their mean is near the labelled colour.
        bright = image.reshape(-1, 3)[image.reshape(-1, 3).max(axis=1) > 100].astype(float)
        nominal = np.array([rgb for _, rgb in world.COLOURS.values()], float)
        assert np.argmin(np.linalg.norm(nominal - bright.mean(axis=0), axis=1)) == label
    again = zeroshot.world_labelled_set("colour", data_config, "test", 40)
    np.testing.assert_array_equal(again.images, colours.images)  # deterministic


def test_to_model_image_makes_rgb_squares_by_resizing_the_short_side_and_centre_cropping():
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 255  # the centre third is white: the crop keeps exactly that third
    square = zeroshot.to_model_image(wide, 8)
    assert square.shape == (8, 8, 3) and square.dtype == np.uint8
    assert square[:, 1:7].min() > 200
    tall = np.zeros((30, 10, 3), np.uint8)
    tall[:10, :, 0] = tall[10:20, :, 1] = tall[20:, :, 2] = 255  # red, green, blue thirds from the top
    square = zeroshot.to_model_image(tall, 8)
    assert square[1:7, :, 1].min() > 200 and square[1:7, :, [0, 2]].max() < 60  # the green middle
    rgba = np.full((8, 8, 4), 7, np.uint8)
    np.testing.assert_array_equal(zeroshot.to_model_image(rgba, 8), np.full((8, 8, 3), 7, np.uint8))
    with pytest.raises(ValueError, match="image must be"):
        zeroshot.to_model_image(np.zeros((4, 4, 2), np.uint8), 8)


def test_tfds_labelled_set_reads_image_and_label_without_tensorflow(tmp_path):
    import tensorflow_datasets as tfds

    class EvalProbeShapes(tfds.core.GeneratorBasedBuilder):
        """Images of varied sizes (zlib-encoded tensors: tfds.features.Image needs TensorFlow to prepare)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
                "label": tfds.features.ClassLabel(names=["dark_red", "green"]),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for index in range(5):
                image = np.zeros((12 + index, 16, 3), np.uint8)
                image[..., index % 2] = 200  # label 0: red channel, label 1: green channel
                yield index, {"image": image, "label": index % 2}

    EvalProbeShapes(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    dataset = zeroshot.tfds_labelled_set("eval_probe_shapes", "test", 4, 8, str(tmp_path))
    assert dataset.class_names == ["dark red", "green"]
    assert dataset.images.shape == (4, 8, 8, 3) and dataset.skipped == 0
    for image, label in zip(dataset.images, dataset.labels):
        assert image[..., label].min() == 200 and image[..., 1 - label].max() == 0
    with pytest.raises(FileNotFoundError, match="not prepared"):
        zeroshot.tfds_labelled_set("eval_probe_shapes", "test", 4, 8, str(tmp_path / "elsewhere"))
