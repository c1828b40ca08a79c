"""Information augmentation on the scenes world: how well a model finds the objects in an image that none of its
captions names (ela_jax/data/scenes.py records which objects are present and which are named).

Two measures, each for two ways of scoring an object word w for image i:
- "lexicon": the image lexicon's weight a_I(i)[w];
- "global": zero-shot through the global embeddings, cos(e_I(i), e_T(prompt naming w)), so a CLIP-only model (no
  trained lexicon) gets a number too.

Object ranking, per image over the object vocabulary minus the words its captions name: AUC of its unnamed present
objects against the absent ones (ties count half; chance 50), and R@k, the share of its unnamed objects ranked in the
top k (out of min(k, their number), ties broken against the model). Query recall: one query per image naming its
unnamed objects ("a cup and a oven"); the relevant images are every image holding all of them; R@k is the share of
queries with a relevant image in the top k (ties against the model). All values are percentages, averaged over images
or queries.

`auc_within_scene` restricts both sides to the objects of the image's own scene. The plain AUC's negatives are mostly
other scenes' objects, so a scorer that recognises no object and only knows the scene gets about 90 there; within the
scene it gets exactly 50, so only recognising the objects themselves lifts this one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ela_jax.data import pipeline, scenes
from ela_jax.data.tokenizer import Tokenizer
from ela_jax.evaluation import retrieval
from ela_jax.evaluation import scores as scores_lib
from ela_jax.evaluation.encode import Encoder

OBJECT_KS = (1, 5)
QUERY_KS = (1, 5, 10)
VARIANTS = ("lexicon", "global")


def object_ranking_metrics(
    scores: np.ndarray, present: np.ndarray, named: np.ndarray, ks=OBJECT_KS, candidates: np.ndarray | None = None
) -> dict:
    """scores [N, O] for each image's object words; present, named bool [N, O]; candidates bool [N, O] (default all)
    limits both the unnamed and the absent objects. Images without an unnamed present object or without an absent
    one are left out. {'auc', 'recall@k', 'num_images'}."""
    scores = np.asarray(scores, np.float64)
    candidates = np.ones_like(present) if candidates is None else candidates
    unnamed, absent = present & ~named & candidates, ~present & candidates
    aucs, recalls = [], {k: [] for k in ks}
    for row, u_mask, a_mask in zip(scores, unnamed, absent):
        if not u_mask.any() or not a_mask.any():
            continue
        u, a = row[u_mask], row[a_mask]
        aucs.append(np.mean((u[:, None] > a[None, :]) + 0.5 * (u[:, None] == a[None, :])))
        # Position of each unnamed object among the candidates: after every absent object scoring as high, and
        # after the unnamed ones scoring higher or tied and listed earlier (so k positions hold at most k objects).
        tied_earlier = (u[None, :] == u[:, None]) & np.tri(len(u), k=-1, dtype=bool)
        position = (a[None, :] >= u[:, None]).sum(1) + (u[None, :] > u[:, None]).sum(1) + tied_earlier.sum(1)
        for k in ks:
            recalls[k].append(np.sum(position < k) / min(k, len(u)))
    metrics = {"auc": 100.0 * float(np.mean(aucs)) if aucs else float("nan"), "num_images": len(aucs)}
    metrics.update({f"recall@{k}": 100.0 * float(np.mean(recalls[k])) if aucs else float("nan") for k in ks})
    return metrics


def query_relevance(query_objects: np.ndarray, present: np.ndarray) -> np.ndarray:
    """bool [Q, N]: image n holds every object of query q; query_objects, present bool [Q, O], [N, O]."""
    missing = query_objects.astype(np.int64) @ (~present).T.astype(np.int64)
    return missing == 0


def query_recall(similarity: np.ndarray, relevant: np.ndarray, ks=QUERY_KS) -> dict:
    """similarity, relevant [Q, N]: per query, the rank of its best relevant image counts the irrelevant images
    scoring at least as high (retrieval.TIE_TOLERANCE, as the retrieval metrics); {'query_recall@k'}."""
    similarity = np.asarray(similarity, np.float64)
    best = np.where(relevant, similarity, -np.inf).max(1, keepdims=True)
    threshold = best - retrieval.TIE_TOLERANCE * np.abs(best)
    ranks = np.sum(~relevant & (similarity >= threshold), axis=1)
    return {f"query_recall@{k}": 100.0 * float(np.mean(ranks < k)) for k in ks}


@dataclasses.dataclass
class ObjectAnnotations:
    """Held-out images with bool [N, O] masks of their present and named objects over `words`."""

    images: np.ndarray
    present: np.ndarray
    named: np.ndarray
    scene: np.ndarray  # int [N], into scenes.SCENE_NAMES
    words: tuple[str, ...] = scenes.OBJECT_NAMES

    def in_scene(self) -> np.ndarray:
        """bool [N, O]: the object belongs to the image's own scene."""
        return self.scene[:, None] == scenes.OBJECT_SCENE[None, : len(self.words)]


def _mask(ids: np.ndarray, count: int) -> np.ndarray:
    mask = np.zeros((len(ids), count), bool)
    rows, columns = np.nonzero(ids != scenes.PAD)
    mask[rows, ids[rows, columns]] = True
    return mask


def applies(data_config) -> bool:
    """The measure needs object annotations: evaluation on the scenes world or the cue world."""
    name, _ = pipeline.eval_source(data_config)
    return name == "world" and data_config.world in ("scenes", "cues")


def load_annotations(data_config, split: str = "test") -> ObjectAnnotations:
    source = pipeline.data_source(data_config, split)
    records = [source[index] for index in range(len(source))]
    count = len(scenes.OBJECT_NAMES)
    return ObjectAnnotations(
        images=np.stack([r["image"] for r in records]),
        present=_mask(np.stack([r["objects_present"] for r in records]), count),
        named=_mask(np.stack([r["objects_named"] for r in records]), count),
        scene=np.asarray([int(r["scene"]) for r in records], np.int64),
    )


def query_texts(query_objects: np.ndarray, words: tuple[str, ...]) -> list[str]:
    return [scenes.object_query([words[o] for o in np.flatnonzero(row)]) for row in query_objects]


def evaluate_unnamed(encoder: Encoder, tokenizer: Tokenizer, annotations: ObjectAnnotations, eval_config) -> dict:
    """{'num_images', 'lexicon': metrics, 'global': metrics}: object ranking and query recall of both variants."""
    image_out = encoder.encode_images(annotations.images)
    prompts = encoder.encode_tokens(*tokenizer.encode([scenes.OBJECT_PROMPT.format(w) for w in annotations.words]))
    queries = annotations.present & ~annotations.named
    query_out = encoder.encode_tokens(*tokenizer.encode(query_texts(queries, annotations.words)))
    relevant = query_relevance(queries, annotations.present)
    word_ids = [tokenizer.token_to_id(w) for w in annotations.words]
    image_global = retrieval.cosine_normalise(image_out["global"])
    object_scores = {
        "lexicon": image_out["lexicon"][:, word_ids],
        "global": image_global @ retrieval.cosine_normalise(prompts["global"]).T,
    }
    results = {"num_images": int(len(annotations.images))}
    for variant in VARIANTS:
        score_fn = scores_lib.score_function(variant, image_out, query_out, eval_config)
        similarity = retrieval.directions(score_fn(np.arange(len(image_global)), np.arange(len(queries))))[1].T
        metrics = object_ranking_metrics(object_scores[variant], annotations.present, annotations.named)
        within = object_ranking_metrics(
            object_scores[variant], annotations.present, annotations.named, candidates=annotations.in_scene()
        )
        metrics.update(auc_within_scene=within["auc"], num_images_within_scene=within["num_images"])
        metrics.update(query_recall(similarity, relevant))
        results[variant] = metrics
    return results


class UnnamedObjects:
    """The measure as an evaluator: annotations loaded once, scored with the encoder's current params."""

    def __init__(self, data_config, eval_config):
        self.data_config, self.eval_config = data_config, eval_config
        self.annotations = None

    def __call__(self, encoder: Encoder, tokenizer: Tokenizer) -> dict:
        if self.annotations is None:
            self.annotations = load_annotations(self.data_config)
        return evaluate_unnamed(encoder, tokenizer, self.annotations, self.eval_config)
