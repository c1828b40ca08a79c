"""Information augmentation on the cue world: whether the image lexicon learned the mute words, which no caption ever
contains (ela_jax/data/cues.py), so that only expansion can have taught them.

For each mute word w, on the held-out images of w's own scene (the scene prior is then no shortcut; no caption is
read), the mute object present against absent:
- "lexicon": the AUC of a_I[w] (ties count half; chance 50) and the activation gap P(a_I[w] > 0 | present) -
  P(a_I[w] > 0 | absent), the share of images whose sparse vector holds w at all;
- "lexicon_auc_same_count": the AUC over only the (present, absent) pairs of images that hold as many objects: an
  image with its mute object holds one glyph more, and a lexicon max-pooled over patches scores any loosely active
  word higher on an image with more glyphs, so the plain AUC credits a word that knows nothing of its object (the
  shuffled-source control shows it); matched by count, such a word scores 50;
- "cue" (the positive control): the same for the cue word's a_I[cue], a word captions do say exactly when the mute
  object is there, so a caption-only model (beta = 0) can learn it: the glyph is learnable;
- "global": the AUC of CLIP-style zero-shot, cos(e_I, e_T("there is a w")), the prompt the unnamed-object measure
  uses, so a model without a trained lexicon gets a number too.
All values are percentages; "mean" averages each over the mute words that have both present and absent images.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ela_jax.data import cues, pipeline, scenes
from ela_jax.data.tokenizer import Tokenizer
from ela_jax.evaluation import retrieval
from ela_jax.evaluation.encode import Encoder

METRICS = ("lexicon_auc", "lexicon_auc_same_count", "lexicon_gap", "cue_auc", "cue_gap", "global_auc")


def presence_auc(scores: np.ndarray, present: np.ndarray) -> float:
    """AUC (percent) of `scores` [N] separating present from absent images (ties count half); nan without either."""
    scores, present = np.asarray(scores, np.float64), np.asarray(present, bool)
    positive, negative = scores[present], scores[~present]
    if not len(positive) or not len(negative):
        return float("nan")
    wins = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    return 100.0 * float(wins.mean())


def matched_auc(scores: np.ndarray, present: np.ndarray, strata: np.ndarray) -> float:
    """`presence_auc` over only the (present, absent) pairs in the same stratum (e.g. object count); nan without any."""
    scores, present, strata = np.asarray(scores, np.float64), np.asarray(present, bool), np.asarray(strata)
    wins, pairs = 0.0, 0
    for stratum in np.unique(strata):
        here = strata == stratum
        positive, negative = scores[here & present], scores[here & ~present]
        wins += float(((positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])).sum())
        pairs += len(positive) * len(negative)
    return 100.0 * wins / pairs if pairs else float("nan")


def activation_gap(scores: np.ndarray, present: np.ndarray) -> float:
    """P(score > 0 | present) - P(score > 0 | absent), in percent; nan without present or absent images."""
    active, present = np.asarray(scores) > 0, np.asarray(present, bool)
    if present.all() or not present.any():
        return float("nan")
    return 100.0 * float(active[present].mean() - active[~present].mean())


def word_metrics(
    lexicon: np.ndarray, cue_lexicon: np.ndarray, global_scores: np.ndarray, present: np.ndarray, counts: np.ndarray
) -> dict:
    """One mute word's measure from its images' scores [N] (a_I[w], a_I[cue], zero-shot), presence mask [N] and
    object counts [N]."""
    return {
        "lexicon_auc": presence_auc(lexicon, present),
        "lexicon_auc_same_count": matched_auc(lexicon, present, counts),
        "lexicon_gap": activation_gap(lexicon, present),
        "cue_auc": presence_auc(cue_lexicon, present),
        "cue_gap": activation_gap(cue_lexicon, present),
        "global_auc": presence_auc(global_scores, present),
        "num_present": int(np.sum(present)),
        "num_absent": int(np.sum(~np.asarray(present, bool))),
    }


def mute_word_metrics(
    image_lexicon: np.ndarray,
    global_scores: np.ndarray,
    image_scene: np.ndarray,
    present: np.ndarray,
    mute_ids: list[int],
    cue_ids: list[int],
    counts: np.ndarray,
) -> dict:
    """image_lexicon [N, V]; global_scores [N, M] (zero-shot score of each mute word); image_scene [N]; present bool
    [N, M] (mute object m in image n); counts [N] (objects in image n). {'words': {word: metrics}, 'mean': metrics}."""
    words = {}
    for m, (word, scene) in enumerate(zip(cues.MUTE_WORDS, cues.MUTE_SCENE)):
        own = image_scene == scene
        words[word] = word_metrics(
            image_lexicon[own, mute_ids[m]],
            image_lexicon[own, cue_ids[m]],
            global_scores[own, m],
            present[own, m],
            counts[own],
        )
    mean = {}
    for name in METRICS:
        values = [metrics[name] for metrics in words.values() if np.isfinite(metrics[name])]
        mean[name] = float(np.mean(values)) if values else float("nan")
    return {"words": words, "mean": mean}


@dataclasses.dataclass
class MuteAnnotations:
    """Held-out images, their scene [N], bool [N, M] presence of each mute object (cues.MUTE_OBJECTS order) and how
    many objects each holds [N]."""

    images: np.ndarray
    scene: np.ndarray
    present: np.ndarray
    counts: np.ndarray


def applies(data_config) -> bool:
    """The measure needs the cue world's annotations."""
    name, _ = pipeline.eval_source(data_config)
    return name == "world" and data_config.world == "cues"


def load_annotations(data_config, split: str = "test") -> MuteAnnotations:
    source = pipeline.data_source(data_config, split)
    records = [source[index] for index in range(len(source))]
    objects = np.stack([r["objects_present"] for r in records])
    present = (objects[:, :, None] == cues.MUTE_OBJECTS[None, None, :]).any(axis=1)
    return MuteAnnotations(
        images=np.stack([r["image"] for r in records]),
        scene=np.asarray([int(r["scene"]) for r in records], np.int64),
        present=present,
        counts=(objects != scenes.PAD).sum(axis=1),
    )


def evaluate_mute_words(encoder: Encoder, tokenizer: Tokenizer, annotations: MuteAnnotations) -> dict:
    """{'num_images', 'words': per mute word metrics, 'mean': their averages}."""
    image_out = encoder.encode_images(annotations.images)
    prompts = encoder.encode_tokens(*tokenizer.encode([scenes.OBJECT_PROMPT.format(w) for w in cues.MUTE_WORDS]))
    global_scores = retrieval.cosine_normalise(image_out["global"]) @ retrieval.cosine_normalise(prompts["global"]).T
    results = mute_word_metrics(
        np.asarray(image_out["lexicon"]),
        global_scores,
        annotations.scene,
        annotations.present,
        [tokenizer.token_to_id(w) for w in cues.MUTE_WORDS],
        [tokenizer.token_to_id(w) for w in cues.CUE_WORDS],
        annotations.counts,
    )
    return {"num_images": int(len(annotations.images)), **results}


class MuteWords:
    """The measure as part of an evaluator: annotations loaded once, scored with the encoder's current params."""

    def __init__(self, data_config):
        self.data_config = data_config
        self.annotations = None

    def __call__(self, encoder: Encoder, tokenizer: Tokenizer) -> dict:
        if self.annotations is None:
            self.annotations = load_annotations(self.data_config)
        return evaluate_mute_words(encoder, tokenizer, self.annotations)
