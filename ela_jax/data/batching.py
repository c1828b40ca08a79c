"""What every data source's pipeline shares: the tokenising batch transform and the evaluation set's layout."""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from ela_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass
class TokeniseBatch(grain.transforms.Map):
    tokenizer: Tokenizer

    def map(self, batch: dict) -> dict:
        token_ids, mask = self.tokenizer.encode([str(c) for c in batch["caption"]])
        return {"images": batch["image"], "token_ids": token_ids, "mask": mask}


@dataclasses.dataclass
class RetrievalSet:
    """Images [N, H, W, 3] uint8 and all captions, with caption_image[c] the index of caption c's image."""

    images: np.ndarray
    captions: list[str]
    caption_image: np.ndarray
