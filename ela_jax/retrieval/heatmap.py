"""Command line: lexicon-patch heatmaps of a training workdir's held-out images (ela_jax.retrieval.patch_maps draws
them; this entry point loads the workdir's model).

Run: python -m ela_jax.retrieval.heatmap --workdir W --output DIR [--count N] [--words K] [--split test]
On the cue world, `--baseline B` draws instead each mute word's map on a held-out image that holds its object, under W
and under B (e.g. an expansive run and its beta = 0 twin): no caption names a mute word, so only expansion can put it
on the image.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

import ela_jax
from ela_jax.cli import quiet_libraries
from ela_jax.data import cues
from ela_jax.data.pipeline import retrieval_set
from ela_jax.evaluation import mute_words
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
    plot_word_comparison,
    word_patch_map,
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
    "plot_word_comparison",
    "word_patch_map",
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


def write_mute_word_maps(workdirs: dict[str, str], output_dir: str, split: str = "test") -> list[str]:
    """For each mute word, its map under every run (label -> cue-world workdir) on the first `split` image of its
    scene that holds its object; returns the PNG paths."""
    require_local(output_dir, "--output")
    runs = {label: ela_jax.load(workdir) for label, workdir in workdirs.items()}
    data_config = next(iter(runs.values())).experiment.config.data
    for label, loaded in runs.items():
        if not mute_words.applies(loaded.experiment.config.data):
            raise ValueError(
                f"{workdirs[label]} was not trained on the cue world (data.world=cues): it has no mute words"
            )
    annotations = mute_words.load_annotations(data_config, split)
    dataset = retrieval_set(data_config, split)
    chosen = [
        int(np.flatnonzero((annotations.scene == scene) & annotations.present[:, m])[0])
        for m, scene in enumerate(cues.MUTE_SCENE)
    ]
    encoded = {
        label: encode_patches(loaded.experiment.model, jax.device_get(loaded.params), annotations.images[chosen])
        for label, loaded in runs.items()
    }
    paths = []
    for row, (image_index, word) in enumerate(zip(chosen, cues.MUTE_WORDS)):
        captions = [dataset.captions[c] for c in np.flatnonzero(dataset.caption_image == image_index)]
        word_maps = {}
        for label, (vocab_logits, lexicon) in encoded.items():
            tokenizer = runs[label].tokenizer
            word_maps[label] = word_patch_map(
                vocab_logits[row], lexicon[row], tokenizer, tokenizer.token_to_id(word), False
            )
        title = f"mute word '{word}' (no caption ever contains it); its object is in this image"
        path = os.path.join(output_dir, f"mute_word_{word}_{split}_{image_index:04d}.png")
        paths.append(plot_word_comparison(annotations.images[image_index], captions, word_maps, path, title))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ela_jax.retrieval.heatmap", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json and checkpoints/)")
    parser.add_argument("--output", required=True, help="directory to write the PNGs into")
    parser.add_argument("--count", type=int, default=4, help="how many images (the first of the split; default 4)")
    parser.add_argument("--words", type=int, default=8, help="lexicon words per image (default 8)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--baseline", help="cue world: a second workdir whose mute-word maps go beside --workdir's")
    args = parser.parse_args(argv)
    quiet_libraries()
    if args.baseline:
        runs = {f"{args.workdir}": args.workdir, f"{args.baseline}": args.baseline}
        paths = write_mute_word_maps(runs, args.output, args.split)
    else:
        paths = write_heatmaps(args.workdir, args.output, args.count, args.split, args.words)
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
