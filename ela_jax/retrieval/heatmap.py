"""Command line: lexicon-patch heatmaps of a training workdir's held-out images (ela_jax.retrieval.patch_maps draws
them; this entry point loads the workdir's model).

Run: python -m ela_jax.retrieval.heatmap --workdir W --output DIR [--count N] [--words K] [--split test]
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

import ela_jax
from ela_jax.cli import quiet_libraries
from ela_jax.data.pipeline import retrieval_set
from ela_jax.paths import require_local
from ela_jax.retrieval.patch_maps import (
    CAPTION_COLOUR,
    EXPANDED_COLOUR,
    PANEL_COLUMNS,
    PANEL_INCHES,
    WordMap,
    encode_patches,
    lexicon_patch_maps,
    plot_heatmap,
)

__all__ = [
    "CAPTION_COLOUR",
    "EXPANDED_COLOUR",
    "PANEL_COLUMNS",
    "PANEL_INCHES",
    "WordMap",
    "encode_patches",
    "lexicon_patch_maps",
    "plot_heatmap",
    "write_heatmaps",
    "main",
]  # the library half is re-exported


def write_heatmaps(workdir: str, output_dir: str, count: int = 4, split: str = "test", num_words: int = 8) -> list[str]:
    """Heatmaps of the first `count` images of `split`, each with its first caption; returns the PNG paths."""
    require_local(output_dir, "--output")
    loaded = ela_jax.load(workdir)
    dataset = retrieval_set(loaded.experiment.config.data, split)
    if count > len(dataset.images):
        raise ValueError(f"--count {count} is more than the {len(dataset.images)} images of split {split!r}")
    images = dataset.images[:count]
    vocab_logits, lexicon = encode_patches(loaded.experiment.model, jax.device_get(loaded.params), images)
    paths = []
    for image_index, image in enumerate(images):
        caption = dataset.captions[int(np.flatnonzero(dataset.caption_image == image_index)[0])]
        word_maps = lexicon_patch_maps(
            vocab_logits[image_index], lexicon[image_index], loaded.tokenizer, caption, num_words
        )
        path = os.path.join(output_dir, f"lexicon_patches_{split}_{image_index:04d}.png")
        paths.append(plot_heatmap(image, caption, word_maps, path))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ela_jax.retrieval.heatmap", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json and checkpoints/)")
    parser.add_argument("--output", required=True, help="directory to write the PNGs into")
    parser.add_argument("--count", type=int, default=4, help="how many images (the first of the split; default 4)")
    parser.add_argument("--words", type=int, default=8, help="lexicon words per image (default 8)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    args = parser.parse_args(argv)
    quiet_libraries()
    for path in write_heatmaps(args.workdir, args.output, args.count, args.split, args.words):
        print(path)


if __name__ == "__main__":
    main()
