"""Command line: index every image of a folder (captions or not) with a trained workdir's model, for
`python -m ela_jax.retrieval.search`. Bad images are skipped and counted; the encode runs in shards and resumes at
the first shard not yet written when rerun (ela_jax.retrieval.folder_index lays out the files).

Run: python -m ela_jax.retrieval.index --workdir W --images DIR --output O [--step N] [--shard_size 1024]
     [--top_k K] [--threshold T] [--quantize SCALE]

The retrievers this module was once the home of live in ela_jax.retrieval.retrievers and are re-exported here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import sparse

import ela_jax
from ela_jax.cli import quiet_libraries
from ela_jax.data.records import SkipCounter
from ela_jax.inference import ELAInference
from ela_jax.paths import require_local
from ela_jax.retrieval import folder_index, sparse_vectors
from ela_jax.retrieval.retrievers import PAD_ID, ExactSparseIndex, FaissFlatIndex, Retriever, SeismicIndex

ENCODE_BATCH = 256  # images per encoder call (ela_jax.load's default)

__all__ = ["PAD_ID", "ExactSparseIndex", "FaissFlatIndex", "Retriever", "SeismicIndex", "index_folder", "main"]


def images_to_index(image_dir: str, output_dir: str, shard_size: int) -> list[str]:
    """The images `index_folder` would encode; raises FolderIndexError (one line) for a request it cannot serve."""
    require_local(output_dir, "--output")
    if not os.path.isdir(image_dir):
        raise folder_index.FolderIndexError(f"--images {image_dir!r} is not a directory")
    if shard_size < 1:
        raise folder_index.FolderIndexError(f"--shard_size must be at least 1, got {shard_size}")
    keys = folder_index.list_images(image_dir)
    if not keys:
        raise folder_index.FolderIndexError(
            f"{image_dir} holds no image files ({', '.join(folder_index.IMAGE_EXTENSIONS)}, in any subfolder)"
        )
    return keys


def index_folder(
    model: ELAInference,
    image_dir: str,
    output_dir: str,
    shard_size: int = 1024,
    top_k: int | None = None,
    threshold: float = 0.0,
    quantize_scale: float | None = None,
    num_threads: int = 4,
    report=print,
) -> dict:
    """Encodes every image under `image_dir` with `model` (ela_jax.load) into `output_dir`, resuming its shards;
    returns index.json's content. `report` receives one progress line per shard."""
    keys = images_to_index(image_dir, output_dir, shard_size)
    model_config = model.experiment.config.model
    size = model_config.image.image_size
    settings = {
        "workdir": os.path.abspath(model.experiment.workdir),
        "step": model.step,
        "images": os.path.abspath(image_dir),
        "image_size": size,
        "shard_size": shard_size,
        "top_k": top_k,
        "threshold": threshold,
    }
    folder_index.check_settings(output_dir, settings)
    skips = SkipCounter(f"index of {image_dir}", max_fraction=1.0)  # bad images are counted, never fatal here
    starts = range(0, len(keys), shard_size)
    shards, done, started = [], 0, time.perf_counter()
    for number, start in enumerate(starts):
        shard_keys = keys[start : start + shard_size]
        path = folder_index.shard_path(output_dir, number)
        shard = folder_index.load_shard(path, shard_keys)
        if shard is None:
            pixels, kept, skipped = folder_index.load_images(image_dir, shard_keys, size, skips, num_threads)
            dense = np.zeros((0, model_config.embed_dim), np.float32)
            lexicon = sparse.csr_matrix((0, model_config.vocab_size), dtype=np.float32)
            if kept:
                outputs = model.encode_images(pixels)
                dense, lexicon = outputs["global"], sparse_vectors.sparsify(outputs["lexicon"], top_k, threshold)
            shard = folder_index.Shard(kept, dense, lexicon, skipped)
            folder_index.save_shard(path, shard)
            done += len(shard_keys)
            rate = done / (time.perf_counter() - started)
            remaining = len(keys) - start - len(shard_keys)
            report(
                f"shard {number + 1}/{len(starts)}: {len(kept)} encoded, {len(skipped)} skipped; "
                f"{start + len(shard_keys)}/{len(keys)} images done, {rate:.1f}/s, about {remaining / rate:.0f} s left"
            )
        else:
            report(f"shard {number + 1}/{len(starts)}: already encoded in {path}, reused")
        shards.append(shard)
    vocabulary = [model.tokenizer.id_to_token(i) for i in range(model_config.vocab_size)]
    return folder_index.write_index(output_dir, shards, vocabulary, settings, quantize_scale)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ela_jax.retrieval.index", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json and checkpoints/)")
    parser.add_argument("--images", required=True, help="folder of images, searched at any depth; captions not needed")
    parser.add_argument("--output", required=True, help="directory for the index; rerun the same command to resume")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--shard_size", type=int, default=1024, help="images per saved shard (default: 1024)")
    parser.add_argument("--top_k", type=int, default=None, help="keep at most K words per image (default: all)")
    parser.add_argument("--threshold", type=float, default=0.0, help="keep lexicon weights above T (default: 0)")
    parser.add_argument(
        "--quantize",
        type=float,
        default=None,
        metavar="SCALE",
        help=f"documents.jsonl with integer weights round(weight * SCALE) for Anserini: use "
        f"{sparse_vectors.ANSERINI_SCALE:g} (default: floats; search always scores the float weights)",
    )
    parser.add_argument("--num_threads", type=int, default=4, help="image decoding threads (default: 4)")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        images_to_index(args.images, args.output, args.shard_size)  # before the model loads
        manifest = index_folder(
            # Encoder batches are padded to full size: no larger than a shard, or small shards pay for padding.
            ela_jax.load(args.workdir, args.step, batch_size=min(ENCODE_BATCH, args.shard_size)),
            args.images,
            args.output,
            args.shard_size,
            args.top_k,
            args.threshold,
            args.quantize,
            args.num_threads,
        )
    except (folder_index.FolderIndexError, FileNotFoundError) as error:
        sys.exit(f"index error: {error}")
    skipped = ", ".join(f"{reason}: {count}" for reason, count in manifest["skipped_reasons"].items())
    print(
        f"indexed {manifest['images']} images of {args.images} into {args.output}"
        + (f"; skipped {manifest['skipped']} ({skipped}), listed in id_map.json" if manifest["skipped"] else "")
        + f"; {manifest['documents']['avg_nonzeros']:.1f} words per image on average"
    )


if __name__ == "__main__":
    main()
