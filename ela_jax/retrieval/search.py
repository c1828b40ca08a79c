"""Command line: search an index written by `python -m ela_jax.retrieval.index` with text queries, printing the top
images' paths, their scores and, for the lexicon score, the words that matched (query weight x image weight).

Run: python -m ela_jax.retrieval.search --index O --query "a red car" [--query "..."] [--top 10]
     [--score lexicon|global]
"""

from __future__ import annotations

import argparse
import sys

import ela_jax
from ela_jax.cli import quiet_libraries
from ela_jax.inference import ELAInference
from ela_jax.retrieval.folder_index import FolderIndex, FolderIndexError, Hit

SCORES = ("lexicon", "global")


def search(
    index_dir: str, queries: list[str], top: int = 10, score: str = "lexicon", model: ELAInference | None = None
) -> list[list[Hit]]:
    """The top images of the index for each query, encoded by the model the index was built with (loaded from the
    workdir and checkpoint step index.json names, unless given)."""
    folder = FolderIndex(index_dir)
    if model is None:
        model = ela_jax.load(folder.settings["workdir"], folder.settings["step"])
    encoded = model.encode_texts(queries)
    if score == "lexicon":
        return [folder.search_lexicon(vector, top) for vector in encoded["lexicon"]]
    return [folder.search_global(vector, top) for vector in encoded["global"]]


def format_hits(query: str, hits: list[Hit], score: str) -> list[str]:
    lines = [f"{query!r} ({score} score, top {len(hits)}):"]
    for rank, hit in enumerate(hits, 1):
        words = ", ".join(f"{word} {weight:.2f}" for word, weight in hit.words)
        lines.append(f"{rank:3d}. {hit.score:8.3f}  {hit.key}" + (f"  [{words}]" if words else ""))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ela_jax.retrieval.search", description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, help="the --output of python -m ela_jax.retrieval.index")
    parser.add_argument("--query", required=True, action="append", help="text to search for (repeat for more)")
    parser.add_argument("--top", type=int, default=10, help="results per query (default: 10)")
    parser.add_argument(
        "--score",
        choices=SCORES,
        default="lexicon",
        help="lexicon: sparse word overlap, with the matched words (default); global: the dense embedding",
    )
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    quiet_libraries()
    try:
        results = search(args.index, args.query, args.top, args.score)
    except (FolderIndexError, FileNotFoundError) as error:
        sys.exit(f"search error: {error}")
    for query, hits in zip(args.query, results):
        print("\n".join(format_hits(query, hits, args.score)))


if __name__ == "__main__":
    main()
