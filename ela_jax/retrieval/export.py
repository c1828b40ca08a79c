"""Command line: a training workdir's held-out split as sparse JSONL for Anserini / Seismic
(ela_jax.retrieval.sparse_vectors writes the files; this entry point loads the workdir's model).

Run: python -m ela_jax.retrieval.export --workdir W --output O [--split test] [--top_k K] [--threshold T]
     [--quantize SCALE]
"""

from __future__ import annotations

import argparse
import os
import sys

import ela_jax
from ela_jax.cli import quiet_libraries
from ela_jax.config import ConfigError
from ela_jax.data.pipeline import retrieval_set
from ela_jax.paths import check_output, one_line_os_error, replaced_whole
from ela_jax.training.checkpoint import CheckpointError
from ela_jax.retrieval.sparse_vectors import (
    ANSERINI_SCALE,
    DOCUMENTS_FILE,
    ID_MAP_FILE,
    QRELS_FILE,
    QUERIES_FILE,
    STATS_FILE,
    export_vectors,
    log,
    prune_and_quantize,
    quantize,
    read_jsonl,
    retrieval_id_map,
    sparsify,
    vector_stats,
    write_jsonl,
)

__all__ = [
    "ANSERINI_SCALE",
    "DOCUMENTS_FILE",
    "ID_MAP_FILE",
    "QRELS_FILE",
    "QUERIES_FILE",
    "STATS_FILE",
    "export_vectors",
    "log",
    "prune_and_quantize",
    "quantize",
    "read_jsonl",
    "retrieval_id_map",
    "sparsify",
    "vector_stats",
    "write_jsonl",
    "export_workdir",
    "main",
]  # the library half is re-exported


def export_workdir(
    workdir: str,
    output_dir: str,
    split: str = "test",
    top_k: int | None = None,
    threshold: float = 0.0,
    quantize_scale: float | None = None,
) -> dict:
    """Encodes `split` of the workdir's dataset with its latest checkpoint: images become documents (id = image index),
    captions queries (id = caption index); id_map.json names each image by its key in the source (a folder's file
    path, COCO's image id, Flickr30K's photo id) and each caption's image."""
    check_output(output_dir, STATS_FILE)
    if quantize_scale is None:
        log.warning(
            "writing float weights: Anserini's JsonVectorCollection reads weights as integers, so weights below 1 "
            "index nothing there; pass --quantize %g for Anserini (Seismic reads floats)",
            ANSERINI_SCALE,
        )
    model = ela_jax.load(workdir)
    dataset = retrieval_set(model.experiment.config.data, split)
    image_lexicon = model.encode_images(dataset.images)["lexicon"]  # [images, V]
    caption_lexicon = model.encode_texts(dataset.captions)["lexicon"]  # [captions, V]
    vocabulary = [model.tokenizer.id_to_token(i) for i in range(image_lexicon.shape[1])]
    id_map = retrieval_id_map(split, dataset.keys, dataset.captions, dataset.caption_image)
    settings = {
        "workdir": os.path.abspath(workdir),
        "split": split,
        "top_k": top_k,
        "threshold": threshold,
        "quantize_scale": quantize_scale,
    }
    with replaced_whole(output_dir, STATS_FILE) as staging:  # stats.json is written last: a whole export has it
        return export_vectors(
            staging,
            prune_and_quantize(image_lexicon, top_k, threshold, quantize_scale),
            prune_and_quantize(caption_lexicon, top_k, threshold, quantize_scale),
            vocabulary,
            id_map,
            settings,
            relevant=dataset.caption_image,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ela_jax.retrieval.export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json and checkpoints/)")
    parser.add_argument("--output", required=True, help="directory for the JSONL files, id_map.json and stats.json")
    parser.add_argument("--split", default="test", help="dataset split to encode (default: test)")
    parser.add_argument("--top_k", type=int, default=None, help="keep at most K words per vector (default: all)")
    parser.add_argument("--threshold", type=float, default=0.0, help="keep weights above T (default: 0)")
    parser.add_argument(
        "--quantize",
        type=float,
        default=None,
        metavar="SCALE",
        help=f"write integer weights round(weight * SCALE), as Anserini needs: use {ANSERINI_SCALE:g} (default: floats)",
    )
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        stats = export_workdir(args.workdir, args.output, args.split, args.top_k, args.threshold, args.quantize)
    except (ConfigError, FileNotFoundError, CheckpointError) as error:
        sys.exit(f"export error: {error}")
    except OSError as error:
        sys.exit(f"export error: {one_line_os_error(error, args.output)}")
    for side in ("documents", "queries"):
        side_stats = stats[side]
        print(
            f"{side}: {side_stats['count']} vectors, {side_stats['avg_nonzeros']:.1f} non-zeros on average, "
            f"{side_stats['empty']} empty"
        )
    print(
        f"vocabulary coverage {stats['vocabulary_coverage']:.3f}; wrote {DOCUMENTS_FILE}, {QUERIES_FILE}, "
        f"{QRELS_FILE}, {ID_MAP_FILE}, {STATS_FILE} to {args.output}"
    )


if __name__ == "__main__":
    main()
