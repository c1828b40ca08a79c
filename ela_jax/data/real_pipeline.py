"""grain pipelines over encoded real data (COCO, Flickr30K, an image-text folder, WebDataset shards): decode, crop,
caption choice, skipping and counting bad records. `pipeline.py` dispatches here for every source but the world.

Train: source -> per-host shard -> per-epoch shuffle -> decode + random resized crop + one caption (a bad record
becomes None, which grain drops) [-> weighted mix of several sources] -> threads + prefetch -> batch -> tokenise
[-> worker processes]. Every step is a
pure function of (seed, index), so the iterator state grain checkpoints resumes the exact stream.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import grain
import numpy as np
from absl import flags

from ela_jax.data import captions_tfds, images, records, sources, webdataset
from ela_jax.data.batching import RetrievalSet, TokeniseBatch, warn_on_unfit_data
from ela_jax.data.tokenizer import Tokenizer


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class DecodeAndCrop(grain.transforms.RandomMap):
    """Encoded record -> {"image": uint8 [size, size, 3], "caption": str}, or None (skipped and counted)."""

    image_size: int
    crop_scale: tuple[float, float]
    random_flip: bool
    skips: records.SkipCounter

    def random_map(self, record: dict, rng: np.random.Generator) -> dict | None:
        self.skips.count_seen()
        key = _text(record.get("key", "?"))
        captions = records.clean_captions(record["captions"])
        if not captions:
            self.skips.skip(key, "no_caption")
            return None
        # Decode large enough that the smallest crop still has image_size pixels across.
        min_side = int(np.ceil(self.image_size / np.sqrt(self.crop_scale[0])))
        try:
            image = images.open_image(record["image"], min_side=min_side)
        except images.ImageDecodeError as error:
            self.skips.skip(key, error.reason)
            return None
        pixels = images.random_resized_crop(image, self.image_size, rng, self.crop_scale, flip=self.random_flip)
        return {"image": pixels, "caption": captions[rng.integers(len(captions))]}


def training_sources(data_config) -> list[tuple[str, str, float]]:
    """(name, manual_dir, weight) of each training source: the `data.train` entries of a mixture, else data.name."""
    if data_config.name != "mixture":
        return [(data_config.name, data_config.manual_dir, 1.0)]
    return [sources.parse_mixture_entry(entry) for entry in data_config.train]


def train_source(config, name: str, manual_dir: str, process_index: int, process_count: int) -> grain.MapDataset:
    """The host's records of one source, seeded; WebDataset shards are split by the source, TFDS records by index."""
    data = config.data
    if name == "webdataset":
        source = webdataset.shard_source(data, manual_dir, process_index, process_count)
        return grain.MapDataset.source(source).seed(config.seed)
    source = captions_tfds.data_source(name, data, manual_dir, "train")
    if len(source) < process_count:
        raise ValueError(f"data source {name!r} has {len(source)} training images for {process_count} hosts")
    return grain.MapDataset.source(source).seed(config.seed)[process_index::process_count]


def train_dataset(config, tokenizer: Tokenizer, process_index: int, process_count: int) -> grain.IterDataset:
    """Infinite stream of host-local batches {images uint8 [b,H,W,3], token_ids int32 [b,L], mask bool [b,L]}."""
    data = config.data
    parts, weights, sample, num_examples = [], [], [], 0
    for name, manual_dir, weight in training_sources(data):
        skips = records.SkipCounter(f"{name} train (host {process_index})", data.max_skip_fraction)
        host_records = train_source(config, name, manual_dir, process_index, process_count)
        num_examples += len(host_records) * process_count
        sample += [
            caption
            for i in range(min(64, len(host_records)))
            for caption in records.clean_captions(host_records[i]["captions"])[:1]
        ]
        part = host_records.shuffle().repeat()
        parts.append(part.random_map(DecodeAndCrop(data.image_size, tuple(data.crop_scale), data.random_flip, skips)))
        weights.append(weight)
    warn_on_unfit_data(tokenizer, sample, num_examples, config)
    # Mixing infinite parts interleaves them deterministically in proportion to the weights.
    dataset = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
    stream = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer_size)
    )
    stream = stream.batch(config.batch_size // process_count, drop_remainder=True).map(TokeniseBatch(tokenizer))
    if data.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; library callers have not parsed any
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    return stream


def image_key(name: str, record: dict) -> str:
    """The name a user knows an image of source `name` by: COCO's image id, Flickr30K's photo id (the file name's
    stem), a folder's path relative to the folder."""
    if name == "coco":
        return str(int(record["image_id"]))
    path = _text(record["key"])
    return os.path.splitext(os.path.basename(path))[0] if name == "flickr30k" else path


def retrieval_set(name: str, manual_dir: str, data_config, split: str) -> RetrievalSet:
    """Every usable image of `split` (shorter side resized, centre crop) with all of its captions."""
    if name not in sources.EVAL_NAMES:
        raise ValueError(
            f"data source {name!r} is for training only; evaluate on coco, flickr30k or folder via "
            "data.eval_name and data.eval_manual_dir"
        )
    source = captions_tfds.data_source(name, data_config, manual_dir, split)
    skips = records.SkipCounter(f"{name} {split}", data_config.max_skip_fraction)
    size = data_config.image_size

    def load(index: int) -> tuple[np.ndarray, tuple[str, ...], str] | None:
        record = source[index]
        skips.count_seen()
        captions = records.clean_captions(record["captions"])
        if not captions:
            skips.skip(_text(record["key"]), "no_caption")
            return None
        try:
            pixels = images.centre_crop(images.open_image(record["image"], min_side=size), size)
            return pixels, captions, image_key(name, record)
        except images.ImageDecodeError as error:
            skips.skip(_text(record["key"]), error.reason)
            return None

    with concurrent.futures.ThreadPoolExecutor(max(1, data_config.num_threads)) as pool:
        loaded = [item for item in pool.map(load, range(len(source))) if item is not None]
    skips.finish()
    if not loaded:
        raise ValueError(f"{name} split {split!r} in {manual_dir} has no usable image")
    captions = [caption for _, image_captions, _ in loaded for caption in image_captions]
    caption_image = [index for index, (_, image_captions, _) in enumerate(loaded) for _ in image_captions]
    return RetrievalSet(
        np.stack([pixels for pixels, _, _ in loaded]),
        captions,
        np.asarray(caption_image, np.int64),
        [key for _, _, key in loaded],
    )
