"""grain input pipelines: the training stream (per-host shard, per-epoch shuffle, one random caption per image,
tokenised, batched) and the evaluation set (every image with all of its captions)."""

from __future__ import annotations

import grain
import numpy as np

from ela_jax.data import cues, real_pipeline, sources, world_tfds
from ela_jax.data.batching import RetrievalSet, TokeniseBatch, warn_on_unfit_data
from ela_jax.data.tokenizer import Tokenizer


def data_source(data_config, split: str):
    """The world's records; real sources go through `real_pipeline` (encoded images)."""
    if data_config.name != "world":
        raise ValueError(f"data.name={data_config.name!r} holds encoded images; read it with real_pipeline")
    return world_tfds.world_builder(data_config).as_data_source(split=split)


def eval_source(data_config) -> tuple[str, str]:
    """(name, manual_dir) of the evaluation source: data.eval_name if set, else the training source."""
    if data_config.eval_name:
        return data_config.eval_name, data_config.eval_manual_dir
    return data_config.name, data_config.manual_dir


def has_test_split(data_config) -> bool:
    """Whether the evaluation source has a test split: a folder source's test.jsonl / test.csv is optional."""
    name, manual_dir = eval_source(data_config)
    return name == "world" or not sources.missing_entries(name, manual_dir, "test")


def _decode(caption) -> str:
    return caption.decode("utf-8", errors="replace") if isinstance(caption, bytes) else str(caption)


class AddTextStream(grain.transforms.RandomMap):
    """The cue world's unpaired sentences beside a host batch: `count` of them, drawn from the batch's random stream."""

    def __init__(self, count: int):
        self.count = count

    def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
        return {**batch, "stream": cues.stream_sentences(rng, self.count)}


class PickCaption(grain.transforms.RandomMap):
    """One of the image's captions, chosen with the pipeline's per-element random stream."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        captions = element["captions"]
        return {"image": element["image"], "caption": _decode(captions[rng.integers(len(captions))])}


def train_dataset(config, tokenizer: Tokenizer, process_index: int, process_count: int) -> grain.IterDataset:
    """Infinite stream of host-local batches {images uint8 [b,H,W,3], token_ids int32 [b,L], mask bool [b,L]}.

    Every host walks the same global stream and reads only its rows of each global batch (host i of n: rows
    [i*b, (i+1)*b) of the batch_size = n*b rows), so the global batches, and the training run, do not depend on
    the number of hosts. Real sources (`real_pipeline`) shard records per host instead.
    """
    if config.data.name != "world":
        return real_pipeline.train_dataset(config, tokenizer, process_index, process_count)
    source = data_source(config.data, "train")
    sample = [_decode(source[i]["captions"][0]) for i in range(min(64, len(source)))]
    warn_on_unfit_data(tokenizer, sample, len(source), config)
    dataset = grain.MapDataset.source(source).seed(config.seed)
    # A slice that keeps every record: grain derives the shuffle's seed from its depth in the pipeline, and this
    # node keeps the stream identical to the one every recorded result was trained on.
    dataset = dataset[:]
    dataset = dataset.shuffle().repeat()  # reshuffled every epoch, deterministically
    dataset = dataset.random_map(PickCaption())
    host_batch_size = config.batch_size // process_count
    dataset = dataset.batch(host_batch_size, drop_remainder=True)[process_index::process_count]
    if config.data.text_stream.batch_size > 0:
        dataset = dataset.random_map(AddTextStream(config.data.text_stream.batch_size // process_count))
    dataset = dataset.map(TokeniseBatch(tokenizer))
    return dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=config.data.num_threads, prefetch_buffer_size=config.data.prefetch_buffer_size)
    )


def retrieval_set(data_config, split: str = "test") -> RetrievalSet:
    name, manual_dir = eval_source(data_config)
    if name != "world":
        return real_pipeline.retrieval_set(name, manual_dir, data_config, split)
    source = data_source(data_config, split)
    images, captions, caption_image, keys = [], [], [], []
    for index in range(len(source)):
        record = source[index]
        images.append(record["image"])
        keys.append(str(int(record["image_id"])))
        for caption in record["captions"]:
            captions.append(_decode(caption))
            caption_image.append(index)
    return RetrievalSet(np.stack(images), captions, np.asarray(caption_image, np.int64), keys)
