"""The embedded worlds as a TFDS builder (ArrayRecord, no TensorFlow), read back through grain like real data.

`data.world` picks the world: "shapes" (ela_jax/data/world.py), "scenes" (ela_jax/data/scenes.py, which also
records each image's scene and its present and named objects) or "cues" (ela_jax/data/cues.py, recorded as scenes)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

from ela_jax import paths
from ela_jax.data import cues, scenes, sources, world


# The worlds whose records carry object annotations (scene, present and named object ids), by spec type.
OBJECT_WORLDS = {scenes.ScenesSpec: scenes, cues.CuesSpec: cues}
SPECS = {"shapes": world.WorldSpec, "scenes": scenes.ScenesSpec, "cues": cues.CuesSpec}  # data.world -> its spec

log = logging.getLogger(__name__)

# What TFDS prints to stdout around preparing a dataset: about a download of "Unknown size", which a dataset generated
# here (a world, a caption file) never has.
TFDS_ANNOUNCEMENTS = ("Downloading and preparing dataset ", "Subsequent calls will reuse this data.")


@dataclasses.dataclass
class WorldBuilderConfig(tfds.core.BuilderConfig):
    spec: world.WorldSpec | scenes.ScenesSpec | cues.CuesSpec = world.WorldSpec()
    num_train: int = 6000
    num_test: int = 1000


class ElaWorld(tfds.core.GeneratorBasedBuilder):
    """Images as raw uint8 tensors and 5 captions each; one builder config per (seed, size, split sizes)."""

    # The version is part of the cache path: a changed world gets a new version, so no stale cache is read back.
    VERSION = tfds.core.Version("2.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Shapes world: 2-4 objects on a 3x3 grid, 5 partial captions with synonyms.",
        "1.1.0": "The scenes world (builder configs named scenes_*), whose captions mostly leave background objects out.",
        "2.0.0": "Shapes world: 2-3 objects on a 2x2 grid, so shapes span several patches.",
        "2.1.0": "Shapes world: bigger, thicker shapes; some captions name a shape without its colour.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.spec.image_size
        features = {
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "image_id": tfds.features.Scalar(dtype=np.int64),
        }
        spec = self.builder_config.spec
        annotated = type(spec) in OBJECT_WORLDS
        if annotated:
            # Object ids (indices into scenes.OBJECT_NAMES), padded with scenes.PAD to a fixed length.
            objects = tfds.features.Tensor(shape=(scenes.MAX_OBJECTS,), dtype=np.int64)
            features.update(scene=tfds.features.Scalar(dtype=np.int64), objects_present=objects, objects_named=objects)
        description = OBJECT_WORLDS[type(spec)].__doc__ if annotated else world.__doc__
        return tfds.core.DatasetInfo(
            builder=self, description=description, features=tfds.features.FeaturesDict(features)
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        spec = self.builder_config.spec
        for index in range(count):
            if type(spec) in OBJECT_WORLDS:
                example = OBJECT_WORLDS[type(spec)].generate_example(spec, split, index)
                yield (
                    index,
                    {
                        "image": example.image,
                        "captions": example.captions,
                        "image_id": index,
                        "scene": example.scene,
                        "objects_present": scenes.padded(example.present),
                        "objects_named": scenes.padded(example.named),
                    },
                )
            else:
                image, captions = world.generate_example(spec, split, index)
                yield index, {"image": image, "captions": captions, "image_id": index}


def prepared(make_builder, lock_path: str):
    """`make_builder()`, prepared offline. Several processes (ablation workers, hosts sharing a disk) may start on a
    dataset nobody has prepared: one prepares it, the others wait at the lock. The builder is made inside the lock,
    so a waiter reads what was prepared."""
    with paths.held_exclusively(lock_path):
        builder = make_builder()
        tfds.disable_progress_bar()  # the train loop has its own progress bar
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False, verify_ssl=False)
            )
    lines = printed.getvalue().splitlines(keepends=True)
    sys.stdout.writelines(line for line in lines if not any(text in line for text in TFDS_ANNOUNCEMENTS))
    if any(TFDS_ANNOUNCEMENTS[1] in line for line in lines):
        log.info("prepared %s in %s", builder.name, builder.data_dir)
    return builder


def world_builder(data_config, prepare: bool = True) -> ElaWorld:
    """The builder for `config.data`; prepared on first use (a few seconds per thousand images)."""
    spec_class = SPECS[data_config.world]
    spec = spec_class(
        seed=data_config.seed, image_size=data_config.image_size, captions_per_image=data_config.captions_per_image
    )
    # The world kind leads the name: the two worlds never share a prepared copy.
    name = (
        f"{data_config.world}_seed{spec.seed}_px{spec.image_size}_cap{spec.captions_per_image}"
        f"_train{data_config.num_train}_test{data_config.num_test}"
    )
    data_dir = sources.prepared_data_dir(data_config)

    def make_builder() -> ElaWorld:
        config = WorldBuilderConfig(
            name=name, spec=spec, num_train=data_config.num_train, num_test=data_config.num_test
        )
        return ElaWorld(config=config, data_dir=data_dir, file_format="array_record")

    if not prepare:
        return make_builder()
    return prepared(make_builder, os.path.join(data_dir, "ela_world", f"{name}.prepare.lock"))
