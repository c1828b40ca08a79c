"""grain input pipelines: the training stream (per-host shard, per-epoch shuffle, one random caption per image,
tokenised, batched) and the evaluation set (every image with all of its captions)."""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from ela_jax.data import world_tfds
from ela_jax.data.tokenizer import Tokenizer


def data_source(data_config, split: str):
    if data_config.name != "world":
        raise ValueError(f"data.name={data_config.name!r} is not a known source; use 'world'")
    return world_tfds.world_builder(data_config).as_data_source(split=split)


def _decode(caption) -> str:
    return caption.decode("utf-8", errors="replace") if isinstance(caption, bytes) else str(caption)


class PickCaption(grain.transforms.RandomMap):
    """One of the image's captions, chosen with the pipeline's per-element random stream."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        captions = element["captions"]
        return {"image": element["image"], "caption": _decode(captions[rng.integers(len(captions))])}


@dataclasses.dataclass
class TokeniseBatch(grain.transforms.Map):
    tokenizer: Tokenizer

    def map(self, batch: dict) -> dict:
        token_ids, mask = self.tokenizer.encode([str(c) for c in batch["caption"]])
        return {"images": batch["image"], "token_ids": token_ids, "mask": mask}


def train_dataset(config, tokenizer: Tokenizer, process_index: int, process_count: int) -> grain.IterDataset:
    """Infinite stream of host-local batches {images uint8 [b,H,W,3], token_ids int32 [b,L], mask bool [b,L]}."""
    source = data_source(config.data, "train")
    dataset = grain.MapDataset.source(source).seed(config.seed)
    dataset = dataset[process_index::process_count]  # each host reads a disjoint shard
    dataset = dataset.shuffle().repeat()  # reshuffled every epoch, deterministically
    dataset = dataset.random_map(PickCaption())
    dataset = dataset.batch(config.batch_size // process_count, drop_remainder=True)
    dataset = dataset.map(TokeniseBatch(tokenizer))
    return dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=config.data.num_threads, prefetch_buffer_size=config.data.prefetch_buffer_size)
    )


@dataclasses.dataclass
class RetrievalSet:
    """Images [N, H, W, 3] uint8 and all captions, with caption_image[c] the index of caption c's image."""

    images: np.ndarray
    captions: list[str]
    caption_image: np.ndarray


def retrieval_set(data_config, split: str = "test") -> RetrievalSet:
    source = data_source(data_config, split)
    images, captions, caption_image = [], [], []
    for index in range(len(source)):
        record = source[index]
        images.append(record["image"])
        for caption in record["captions"]:
            captions.append(_decode(caption))
            caption_image.append(index)
    return RetrievalSet(np.stack(images), captions, np.asarray(caption_image, np.int64))
