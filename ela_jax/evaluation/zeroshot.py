"""Zero-shot classification: each class name goes into prompt templates, an image is assigned the class whose prompts
score highest, and top-1 / top-5 accuracy and mean per-class recall are reported (CLIP_benchmark's key names).

Labelled images come from the embedded world (single-object images labelled by colour or shape) or from any prepared
TFDS dataset with an `image` and a `label` (ClassLabel) feature, read TF-free through `as_data_source`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from PIL import Image

from ela_jax.data import world
from ela_jax.data.tokenizer import Tokenizer
from ela_jax.evaluation import retrieval, scores
from ela_jax.evaluation.encode import Encoder

# The seven prompts the CLIP authors' ImageNet notebook selected from their 80.
CLIP_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# Prompts for the world's labelled sets, written in the world's caption vocabulary (its tokenizer knows no other
# word): a colour is named on every shape, a shape in the captions' phrasings.
WORLD_TEMPLATES = {
    "colour": tuple(f"a {{}} {shape}" for shape in world.SHAPES),
    "shape": ("a {}", "there is a {}", "the picture shows a {}", "a big {}", "a small {}"),
}
WORLD_DEFAULT_COUNT = 1000  # the world is unbounded; num_examples = 0 draws this many
WORLD_STREAM = 100  # random streams [seed, 100 + split, index]: disjoint from the retrieval set's [seed, split, index]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LabelledSet:
    """Images uint8 [N, S, S, 3], labels int64 [N] indexing class_names; `skipped` records could not be read."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    skipped: int = 0


def world_labelled_set(attribute: str, data_config, split: str, count: int) -> LabelledSet:
    """`count` single-object world images labelled by the object's `attribute` ("colour" or "shape")."""
    class_names = list(world.COLOURS) if attribute == "colour" else list(world.SHAPES)
    spec = world.WorldSpec(seed=data_config.seed, image_size=data_config.image_size, min_objects=1, max_objects=1)
    images, labels = [], []
    for index in range(count or WORLD_DEFAULT_COUNT):
        rng = np.random.default_rng([spec.seed, WORLD_STREAM + world.SPLITS[split], index])
        objects = world.sample_objects(rng, spec)
        images.append(world.render_image(rng, objects, spec.image_size))
        labels.append(class_names.index(getattr(objects[0], attribute)))
    return LabelledSet(np.stack(images), np.asarray(labels, np.int64), class_names)


def to_model_image(image: np.ndarray, size: int) -> np.ndarray:
    """Any uint8 image [H, W], [H, W, 1|3|4] -> RGB uint8 [size, size, 3]: shorter side resized to `size` (bicubic),
    then the centre cropped, as CLIP preprocesses."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image must be [H, W] or [H, W, 1|3|4], got shape {array.shape}")
    array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
    height, width = array.shape[:2]
    if (height, width) == (size, size):
        return array.astype(np.uint8)
    scale = size / min(height, width)
    resized_height, resized_width = max(size, round(height * scale)), max(size, round(width * scale))
    resized = Image.fromarray(array.astype(np.uint8)).resize((resized_width, resized_height), Image.BICUBIC)
    top, left = (resized_height - size) // 2, (resized_width - size) // 2
    return np.asarray(resized)[top : top + size, left : left + size]


def tfds_labelled_set(name: str, split: str, count: int, image_size: int, data_dir: str | None) -> LabelledSet:
    """The first `count` (0: all) examples of a prepared TFDS dataset; records that fail to decode are skipped and
    counted."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared under {builder.data_dir}; prepare it there in ArrayRecord format "
            "(`tfds build --file_format=array_record`, which needs TensorFlow for image features) or set data.dir"
        )
    features = builder.info.features
    if (
        "image" not in features
        or "label" not in features
        or not isinstance(features["label"], tfds.features.ClassLabel)
    ):
        raise ValueError(
            f"TFDS dataset {name!r} needs an 'image' and a ClassLabel 'label' feature, has {list(features)}"
        )
    source = builder.as_data_source(split=split)
    total = len(source) if not count else min(count, len(source))
    images, labels, skipped = [], [], 0
    for index in range(total):
        try:
            record = source[index]
            images.append(to_model_image(record["image"], image_size))
            labels.append(int(record["label"]))
        except Exception as error:  # one bad record must not end the evaluation
            skipped += 1
            log.warning("skipped record %d of %s[%s]: %s", index, name, split, error)
    class_names = [class_name.replace("_", " ") for class_name in features["label"].names]
    return LabelledSet(np.stack(images), np.asarray(labels, np.int64), class_names, skipped)


def labelled_set(zeroshot_config, data_config, image_size: int) -> LabelledSet:
    dataset = zeroshot_config.dataset
    if dataset.startswith("tfds:"):
        return tfds_labelled_set(
            dataset.removeprefix("tfds:"),
            zeroshot_config.split,
            zeroshot_config.num_examples,
            image_size,
            data_config.dir,
        )
    return world_labelled_set(
        dataset.removeprefix("world_"), data_config, zeroshot_config.split, zeroshot_config.num_examples
    )


def default_templates(dataset: str) -> tuple[str, ...]:
    return CLIP_TEMPLATES if dataset.startswith("tfds:") else WORLD_TEMPLATES[dataset.removeprefix("world_")]


def prompts(class_names: list[str], templates: tuple[str, ...]) -> list[str]:
    """Class-major: prompt c * len(templates) + t is template t filled with class c."""
    return [template.format(name) for name in class_names for template in templates]


def class_score_function(
    score: str, image_out: dict, prompt_out: dict, num_classes: int, eval_config
) -> retrieval.ScoreFn:
    """ScoreFn over (image rows, class columns). `global` and `lexicon` average the prompts' vectors over templates
    (CLIP's prompt ensemble: normalised, averaged, normalised again where the score is a cosine); `fine` averages
    the FILIP image->text score over templates, since token sets of different prompts cannot be averaged; `hybrid`
    combines these class scores as in retrieval."""
    num_templates = len(prompt_out["global"]) // num_classes
    if score in ("global", "lexicon"):
        if score == "global":
            image_vectors, prompt_vectors = image_out["global"], prompt_out["global"]
        else:
            image_vectors = scores.lexicon_vectors(image_out, eval_config.lexicon_similarity)
            prompt_vectors = scores.lexicon_vectors(prompt_out, eval_config.lexicon_similarity)
        class_vectors = prompt_vectors.reshape(num_classes, num_templates, -1).mean(axis=1)
        if score == "global" or eval_config.lexicon_similarity == "cosine":
            class_vectors = retrieval.cosine_normalise(class_vectors)
        return retrieval.dot_score_fn(image_vectors, class_vectors)
    if score == "fine":
        prompt_scores = scores.score_function("fine", image_out, prompt_out, eval_config)

        def fine_class_scores(rows: np.ndarray, classes: np.ndarray) -> np.ndarray:
            columns = (np.asarray(classes)[:, None] * num_templates + np.arange(num_templates)).ravel()
            image_to_text = prompt_scores(rows, columns).image_to_text
            return image_to_text.reshape(len(rows), len(classes), num_templates).mean(axis=-1)

        return fine_class_scores
    if score == "hybrid":
        weights = {part: float(eval_config.hybrid_weights[part]) for part in scores.HYBRID_PARTS}
        parts = {
            part: class_score_function(part, image_out, prompt_out, num_classes, eval_config)
            for part, weight in weights.items()
            if weight > 0
        }
        num_images = len(image_out["global"])
        return scores.HybridScorer(
            parts, weights, eval_config.hybrid_normalise, num_images, num_classes, eval_config.batch_size
        )
    raise ValueError(f"unknown score {score!r}")


def label_ranks(score_fn: retrieval.ScoreFn, labels: np.ndarray, num_classes: int, chunk_size: int) -> np.ndarray:
    """0-based rank of each image's true class: the other classes scoring at least as high (ties count against the
    model, as in retrieval), computed chunk_size images at a time."""
    ranks = np.empty(len(labels), np.int64)
    all_classes = np.arange(num_classes)
    for start in range(0, len(labels), chunk_size):
        rows = np.arange(start, min(start + chunk_size, len(labels)))
        class_scores = retrieval.directions(score_fn(rows, all_classes))[0]  # image -> class: [rows, classes]
        true_scores = class_scores[np.arange(len(rows)), labels[rows]]
        ranks[rows] = np.sum(class_scores >= retrieval.tied_with(true_scores)[:, None], axis=1) - 1
    return ranks


def classification_metrics(ranks: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """acc1, acc5 (top-min(5, classes)) and mean_per_class_recall (top-1 recall averaged over the classes present),
    in percent."""
    present = np.unique(labels)
    return {
        "acc1": 100.0 * float(np.mean(ranks < 1)),
        "acc5": 100.0 * float(np.mean(ranks < min(5, num_classes))),
        "mean_per_class_recall": 100.0 * float(np.mean([np.mean(ranks[labels == c] < 1) for c in present])),
    }


def evaluate_zeroshot(
    encoder: Encoder, tokenizer: Tokenizer, dataset: LabelledSet, templates: tuple[str, ...], eval_config
) -> dict:
    """{'num_examples', 'num_classes', 'skipped', 'templates', 'scores': {score: metrics}}."""
    zeroshot_scores = eval_config.zeroshot.scores
    with_fine = scores.needs_token_embeddings(zeroshot_scores, eval_config.hybrid_weights)
    num_classes = len(dataset.class_names)
    image_out = encoder.encode_images(dataset.images, with_fine=with_fine)
    token_ids, mask = tokenizer.encode(prompts(dataset.class_names, templates))
    prompt_out = encoder.encode_tokens(token_ids, mask, with_fine=with_fine)
    results = {
        "num_examples": int(len(dataset.labels)),
        "num_classes": num_classes,
        "skipped": int(dataset.skipped),
        "templates": list(templates),
        "scores": {},
    }
    for score in zeroshot_scores:
        score_fn = class_score_function(score, image_out, prompt_out, num_classes, eval_config)
        ranks = label_ranks(score_fn, dataset.labels, num_classes, eval_config.batch_size)
        results["scores"][score] = classification_metrics(ranks, dataset.labels, num_classes)
    return results
