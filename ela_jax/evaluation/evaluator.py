"""Held-out retrieval evaluation: encode every image and caption, score, and report R@K both ways."""

from __future__ import annotations

import numpy as np

from ela_jax.data.pipeline import RetrievalSet
from ela_jax.data.tokenizer import Tokenizer
from ela_jax.evaluation import retrieval
from ela_jax.evaluation.encode import Encoder


def score_function(score: str, image_out: dict, text_out: dict, lexicon_similarity: str) -> retrieval.ScoreFn:
    if score == "global":
        return retrieval.dot_score_fn(image_out["global"], text_out["global"])
    if score == "lexicon":
        image_lexicon, text_lexicon = image_out["lexicon"], text_out["lexicon"]
        if lexicon_similarity == "cosine":
            image_lexicon = retrieval.cosine_normalise(image_lexicon)
            text_lexicon = retrieval.cosine_normalise(text_lexicon)
        return retrieval.dot_score_fn(image_lexicon, text_lexicon)
    raise ValueError(f"unknown score {score!r}")


def evaluate_retrieval(encoder: Encoder, tokenizer: Tokenizer, dataset: RetrievalSet, eval_config) -> dict:
    """{'num_images', 'num_captions', 'scores': {score: metrics}, 'lexicon_nonzeros': {...}}."""
    image_out = encoder.encode_images(dataset.images)
    token_ids, mask = tokenizer.encode(dataset.captions)
    text_out = encoder.encode_tokens(token_ids, mask)
    results = {"num_images": int(len(dataset.images)), "num_captions": int(len(dataset.captions)), "scores": {}}
    for score in eval_config.scores:
        score_fn = score_function(score, image_out, text_out, eval_config.lexicon_similarity)
        image_ranks, caption_ranks = retrieval.retrieval_ranks(score_fn, len(dataset.images), dataset.caption_image)
        results["scores"][score] = retrieval.recall_metrics(image_ranks, caption_ranks)
    results["lexicon_nonzeros"] = {
        "image": float(np.mean(np.sum(image_out["lexicon"] > 0, axis=-1))),
        "text": float(np.mean(np.sum(text_out["lexicon"] > 0, axis=-1))),
    }
    return results
