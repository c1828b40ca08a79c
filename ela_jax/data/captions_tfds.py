"""TFDS builders (ArrayRecord, no TensorFlow) for MSCOCO and Flickr30K with the Karpathy splits and for a user's
image-text folder. Records hold the original encoded image bytes (checked to decode at prepare time) and every
caption of the image; decoding, resizing and augmentation happen in the grain pipeline.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from ela_jax import paths
from ela_jax.data import images, records
from ela_jax.data.sources import (
    FLICKR_IMAGE_DIR,
    FOLDER_EXTENSIONS,
    FOLDER_SPLIT_FILES,
    KARPATHY_FILES,
    prepared_data_dir,
)
from ela_jax.data.world_tfds import prepared

# Prepare-time check: JPEGs are decoded at DCT scale (up to 8x smaller), which still reads every byte, so
# truncation is caught at a fraction of a full decode.
CHECK_SIDE = 32
CHECK_CHUNK = 256


@dataclasses.dataclass
class CaptionsConfig(tfds.core.BuilderConfig):
    manual_dir: str = ""
    max_skip_fraction: float = 0.05
    num_threads: int = 2


class _CaptionedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One example per image: encoded bytes, all captions, a unique key, the upstream image id."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Encoded image bytes, every caption per image, key, image id."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes (Image needs TF)
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                    "key": tfds.features.Text(),
                    "image_id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
        )

    @abc.abstractmethod
    def _read_records(self, skips: records.SkipCounter) -> dict[str, list[records.ImageText]]:
        """{split: records} read from the manual directory; each dataset's builder knows its upstream layout."""

    def _split_generators(self, dl_manager):
        del dl_manager  # the user downloads (licences); everything is read from manual_dir
        config = self.builder_config
        skips = records.SkipCounter(f"{self.name} annotations", config.max_skip_fraction)
        splits = self._read_records(skips)
        skips.finish()
        return {split: self._generate_examples(split, items) for split, items in splits.items() if items}

    def _generate_examples(self, split: str, items: list[records.ImageText]):
        config = self.builder_config
        skips = records.SkipCounter(f"{self.name}[{split}]", config.max_skip_fraction)
        with concurrent.futures.ThreadPoolExecutor(max(1, config.num_threads)) as pool:
            for start in range(0, len(items), CHECK_CHUNK):
                chunk = items[start : start + CHECK_CHUNK]
                for item, (data, problem) in zip(chunk, pool.map(_read_checked, chunk)):
                    skips.count_seen()
                    if problem:
                        skips.skip(item.key, problem)
                        continue
                    yield (
                        item.key,
                        {"image": data, "captions": item.captions, "key": item.key, "image_id": item.image_id},
                    )
        skips.finish()


def _read_checked(item: records.ImageText) -> tuple[bytes, str]:
    """(bytes, '') for a decodable image, (b'', reason) otherwise; never raises for a bad file."""
    try:
        data = paths.read_bytes(item.image_path)
    except FileNotFoundError:
        return b"", "missing"
    except OSError:
        return b"", "unreadable"
    try:
        images.open_image(data, min_side=CHECK_SIDE)
    except images.ImageDecodeError as error:
        return b"", error.reason
    return data, ""


class ElaCocoKarpathy(_CaptionedImages):
    """MSCOCO 2014 with the Karpathy splits: train (train + restval, 113,287 images), validation (5,000),
    test (5,000 images, 25,010 captions). manual_dir holds dataset_coco.json, train2014/ and val2014/."""

    def _read_records(self, skips):
        manual_dir = self.builder_config.manual_dir
        return records.read_karpathy(os.path.join(manual_dir, KARPATHY_FILES["coco"]), manual_dir, skips)


class ElaFlickr30kKarpathy(_CaptionedImages):
    """Flickr30K with the Karpathy splits: train (29,000 images), validation (1,014), test (1,000 images, 5,000
    captions). manual_dir holds dataset_flickr30k.json and flickr30k-images/."""

    def _read_records(self, skips):
        manual_dir = self.builder_config.manual_dir
        json_path = os.path.join(manual_dir, KARPATHY_FILES["flickr30k"])
        return records.read_karpathy(json_path, os.path.join(manual_dir, FLICKR_IMAGE_DIR), skips)


class ElaImageTextFolder(_CaptionedImages):
    """A user's images with captions.jsonl / captions.csv (the train split) and optionally train / validation /
    test .jsonl or .csv files beside them; image paths are relative to the folder."""

    def _read_records(self, skips):
        manual_dir = self.builder_config.manual_dir
        splits: dict[str, list[records.ImageText]] = {}
        for split, caption_files in folder_caption_files(manual_dir).items():
            splits[split] = records.read_caption_files(caption_files, manual_dir, skips)
        return splits


BUILDERS = {"coco": ElaCocoKarpathy, "flickr30k": ElaFlickr30kKarpathy, "folder": ElaImageTextFolder}


def folder_caption_files(manual_dir: str) -> dict[str, list[str]]:
    """split -> caption files found in `manual_dir` (captions.* is train)."""
    splits: dict[str, list[str]] = {}
    for stem, split in FOLDER_SPLIT_FILES.items():
        for extension in FOLDER_EXTENSIONS:
            path = os.path.join(manual_dir, stem + extension)
            if paths.is_file(path):
                splits.setdefault(split, []).append(path)
    return splits


def annotation_files(name: str, manual_dir: str) -> list[str]:
    if name == "folder":
        return [path for paths in folder_caption_files(manual_dir).values() for path in paths]
    return [os.path.join(manual_dir, KARPATHY_FILES[name])]


def _fingerprint(name: str, manual_dir: str) -> str:
    """Names the prepared copy after the folder and its annotation files, so a changed file is prepared again."""
    digest = hashlib.sha1(paths.absolute(manual_dir).encode())
    for path in annotation_files(name, manual_dir):
        digest.update(f"{os.path.basename(path)}:{paths.version(path)}".encode())
    return digest.hexdigest()[:12]


def captions_builder(name: str, data_config, manual_dir: str, prepare: bool = True) -> _CaptionedImages:
    """The prepared builder for source `name` ('coco', 'flickr30k', 'folder') reading `manual_dir`."""
    config = CaptionsConfig(
        name=f"src_{_fingerprint(name, manual_dir)}",
        manual_dir=paths.absolute(manual_dir),
        max_skip_fraction=data_config.max_skip_fraction,
        num_threads=data_config.num_threads,
    )
    data_dir = prepared_data_dir(data_config)

    def make_builder():
        return BUILDERS[name](config=config, data_dir=data_dir, file_format="array_record")

    return prepared(make_builder, os.path.join(data_dir, f"{config.name}.prepare.lock")) if prepare else make_builder()


def data_source(name: str, data_config, manual_dir: str, split: str):
    builder = captions_builder(name, data_config, manual_dir)
    if split not in builder.info.splits:
        raise ValueError(
            f"data source {name!r} in {manual_dir} has splits {sorted(builder.info.splits)}, not {split!r}"
            + ("; add a test.jsonl or test.csv beside captions.jsonl" if name == "folder" else "")
        )
    return builder.as_data_source(split=split)
