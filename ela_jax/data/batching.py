"""What every data source's pipeline shares: the tokenising batch transform and the evaluation set's layout."""

from __future__ import annotations

import dataclasses
import logging

import grain
import numpy as np

from ela_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Above this share of [UNK] among caption words the vocabulary does not fit the captions (the embedded world's
# handful of words on real captions): the text tower and the lexicon would learn from almost nothing.
UNKNOWN_SHARE_WARNING = 0.3


@dataclasses.dataclass
class TokeniseBatch(grain.transforms.Map):
    tokenizer: Tokenizer

    def map(self, batch: dict) -> dict:
        token_ids, mask = self.tokenizer.encode([str(c) for c in batch["caption"]])
        tokenised = {"images": batch["image"], "token_ids": token_ids, "mask": mask}
        if "stream" in batch:  # unpaired sentences, for MLM only
            tokenised["stream_tokens"], tokenised["stream_mask"] = self.tokenizer.encode(list(batch["stream"]))
        return tokenised


@dataclasses.dataclass
class RetrievalSet:
    """Images [N, H, W, 3] uint8 and all captions, with caption_image[c] the index of caption c's image; keys[i]
    names image i in its source (`real_pipeline.image_key`), so results can be traced back to the user's files."""

    images: np.ndarray
    captions: list[str]
    caption_image: np.ndarray
    keys: list[str]


def unknown_share(tokenizer: Tokenizer, captions: list[str]) -> float:
    """The share of [UNK] among the captions' tokens (special tokens and padding not counted)."""
    token_ids, mask = tokenizer.encode(captions)
    words = mask & ~np.isin(token_ids, [i for i in tokenizer.special_ids if i != tokenizer.unk_id])
    return float((token_ids[words] == tokenizer.unk_id).sum() / max(1, words.sum()))


def warn_on_unfit_data(tokenizer: Tokenizer, captions: list[str], num_examples: int | None, config) -> None:
    """One warning line each when the vocabulary leaves most caption words [UNK] or when a global batch holds more
    pairs than the training set has images (every batch then repeats images, whose copies become negatives)."""
    share = unknown_share(tokenizer, captions)
    if share > UNKNOWN_SHARE_WARNING:
        log.warning(
            "%.0f%% of the caption words in a sample of %s are [UNK] under tokenizer.vocab=%r; use a vocabulary that "
            "covers the captions, e.g. tokenizer.vocab='bert-base-uncased'",
            100 * share,
            config.data.name,
            config.tokenizer.vocab,
        )
    if num_examples is not None and config.batch_size > num_examples:
        log.warning(
            "batch_size %d exceeds the %d training images of %s: every batch repeats images; lower batch_size",
            config.batch_size,
            num_examples,
            config.data.name,
        )
