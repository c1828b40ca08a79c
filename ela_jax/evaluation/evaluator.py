"""Held-out retrieval evaluation: encode every image and caption, score, and report R@K both ways."""

from __future__ import annotations

import numpy as np

from ela_jax.data.batching import RetrievalSet
from ela_jax.data.tokenizer import Tokenizer
from ela_jax.evaluation import retrieval, scores, search
from ela_jax.evaluation.encode import Encoder

RECALL_KS = (1, 5, 10)


def evaluate_retrieval(encoder: Encoder, tokenizer: Tokenizer, dataset: RetrievalSet, eval_config) -> dict:
    """{'num_images', 'num_captions', 'scores': {score: metrics}, 'retrievers': {score: how it was ranked},
    'lexicon_nonzeros': {...}}."""
    with_fine = scores.needs_token_embeddings(eval_config.scores, eval_config.hybrid_weights)
    image_out = encoder.encode_images(dataset.images, with_fine=with_fine)
    token_ids, mask = tokenizer.encode(dataset.captions)
    text_out = encoder.encode_tokens(token_ids, mask, with_fine=with_fine)
    results = {
        "num_images": int(len(dataset.images)),
        "num_captions": int(len(dataset.captions)),
        "scores": {},
        "retrievers": {},
    }
    for score in eval_config.scores:
        if search.serves(eval_config.retriever, score):
            ranks = search.index_ranks(
                eval_config.retriever, score, image_out, text_out, dataset.caption_image, max(RECALL_KS), eval_config
            )
            metrics = retrieval.recall_metrics(*ranks, RECALL_KS, censored_at=max(RECALL_KS))
            results["retrievers"][score] = eval_config.retriever
        else:
            score_fn = scores.score_function(score, image_out, text_out, eval_config)
            ranks = retrieval.retrieval_ranks(
                score_fn, len(dataset.images), dataset.caption_image, eval_config.batch_size
            )
            metrics = retrieval.recall_metrics(*ranks, RECALL_KS)
            results["retrievers"][score] = "matrix"
        results["scores"][score] = metrics
    results["lexicon_nonzeros"] = {
        "image": float(np.mean(np.sum(image_out["lexicon"] > 0, axis=-1))),
        "text": float(np.mean(np.sum(text_out["lexicon"] > 0, axis=-1))),
    }
    return results
