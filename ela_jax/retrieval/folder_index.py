"""A search index over every image of a folder, keyed by each image's path relative to the folder: what
`python -m ela_jax.retrieval.index` writes and `python -m ela_jax.retrieval.search` reads.

The encode runs in shards of images (sorted paths), each saved on its own under O/shards/ as soon as it is encoded,
so a stopped run resumes at the first shard not yet written. When every shard is there the index is assembled:

  O/documents/documents.jsonl  the sparse export (Anserini / Seismic layout, ela_jax.retrieval.sparse_vectors)
  O/id_map.json                document id -> path; the images skipped, with their reasons
  O/lexicon.npz                lexicon vectors, CSR [images, |V|] (float weights; what search scores)
  O/dense.npy                  global embeddings, float32 [images, d], rows in id order
  O/vocabulary.txt             the model's wordpieces, one per line (word id = line number)
  O/index.json                 the settings, the counts and the model (workdir, checkpoint step) it came from
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os

import numpy as np
from scipy import sparse

from ela_jax.data import images
from ela_jax.data.records import SkipCounter
from ela_jax.retrieval import retrievers, sparse_vectors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SHARDS_DIR = "shards"
SETTINGS_FILE = os.path.join(SHARDS_DIR, "settings.json")
MANIFEST_FILE = "index.json"
LEXICON_FILE = "lexicon.npz"
DENSE_FILE = "dense.npy"
VOCABULARY_FILE = "vocabulary.txt"
MATCHED_WORDS = 5  # words a search result names, the heaviest contributions to its score first


class FolderIndexError(ValueError):
    """An index that cannot be written or read as asked; the message says what to do."""


def list_images(image_dir: str) -> list[str]:
    """Every file with an image extension under `image_dir` (any depth, hidden folders left out), as sorted paths
    relative to it with '/' separators."""
    found = []
    for root, folders, files in os.walk(image_dir):
        folders[:] = [folder for folder in folders if not folder.startswith(".")]
        relative_root = os.path.relpath(root, image_dir)
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = name if relative_root == "." else os.path.join(relative_root, name)
                found.append(path.replace(os.sep, "/"))
    return sorted(found)


def load_images(
    image_dir: str, keys: list[str], size: int, skips: SkipCounter, num_threads: int = 4
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """(pixels uint8 [n, size, size, 3] in the evaluation geometry, their keys, (key, reason) of each image skipped:
    missing, unreadable, empty, corrupt or too_large). Never raises for a bad file."""

    def load(key: str) -> np.ndarray | str:
        skips.count_seen()
        try:
            with open(os.path.join(image_dir, key), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "unreadable"
        try:
            return images.centre_crop(images.open_image(data, min_side=size), size)
        except images.ImageDecodeError as error:
            return error.reason

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        loaded = list(pool.map(load, keys))
    kept = [(key, pixels) for key, pixels in zip(keys, loaded) if not isinstance(pixels, str)]
    skipped = [(key, reason) for key, reason in zip(keys, loaded) if isinstance(reason, str)]
    for key, reason in skipped:
        skips.skip(key, reason)
    pixels = np.stack([p for _, p in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    return pixels, [key for key, _ in kept], skipped


@dataclasses.dataclass
class Shard:
    """One encoded run of images: the kept images' keys with their global [n, d] and lexicon (CSR [n, |V|]) vectors,
    and the skipped images with their reasons."""

    keys: list[str]
    dense: np.ndarray
    lexicon: sparse.csr_matrix
    skipped: list[tuple[str, str]]

    @property
    def all_keys(self) -> list[str]:
        """Every image the shard covers, kept or skipped, in path order."""
        return sorted(self.keys + [key for key, _ in self.skipped])


def shard_path(output_dir: str, number: int) -> str:
    return os.path.join(output_dir, SHARDS_DIR, f"{number:05d}.npz")


def save_shard(path: str, shard: Shard) -> None:
    """Written to a temporary name and renamed, so a run killed mid-write leaves no shard that looks complete."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".partial.npz"
    np.savez(
        temporary,
        keys=np.asarray(shard.keys, dtype=str),
        dense=shard.dense.astype(np.float32),
        lexicon_data=shard.lexicon.data.astype(np.float32),
        lexicon_indices=shard.lexicon.indices,
        lexicon_indptr=shard.lexicon.indptr,
        lexicon_shape=np.asarray(shard.lexicon.shape),
        skipped_keys=np.asarray([key for key, _ in shard.skipped], dtype=str),
        skipped_reasons=np.asarray([reason for _, reason in shard.skipped], dtype=str),
    )
    os.replace(temporary, path)


def load_shard(path: str, expected_keys: list[str]) -> Shard | None:
    """The shard at `path` if it covers exactly `expected_keys` (a folder that changed since is encoded again)."""
    if not os.path.isfile(path):
        return None
    with np.load(path) as stored:
        lexicon = sparse.csr_matrix(
            (stored["lexicon_data"], stored["lexicon_indices"], stored["lexicon_indptr"]),
            shape=tuple(stored["lexicon_shape"]),
        )
        shard = Shard(
            [str(key) for key in stored["keys"]],
            stored["dense"],
            lexicon,
            [(str(k), str(r)) for k, r in zip(stored["skipped_keys"], stored["skipped_reasons"])],
        )
    return shard if shard.all_keys == sorted(expected_keys) else None


def check_settings(output_dir: str, settings: dict) -> None:
    """Records `settings` for the shards in `output_dir`, or refuses when shards there were encoded under others
    (another model, checkpoint, folder or pruning): mixing them would give one index two models' vectors."""
    path = os.path.join(output_dir, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        differing = sorted(key for key in set(stored) | set(settings) if stored.get(key) != settings.get(key))
        if differing:
            shown = ", ".join(f"{key}={stored.get(key)!r} (now {settings.get(key)!r})" for key in differing)
            raise FolderIndexError(
                f"{output_dir} holds shards encoded with {shown}; use another --output, delete {output_dir}, "
                "or rerun with the same settings to resume"
            )
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=1)


def write_index(
    output_dir: str, shards: list[Shard], vocabulary: list[str], settings: dict, quantize_scale: float | None
) -> dict:
    """Assembles the shards into the files the module docstring lists; returns the manifest (index.json)."""
    keys = [key for shard in shards for key in shard.keys]
    skipped = [item for shard in shards for item in shard.skipped]
    if not keys:
        raise FolderIndexError(
            f"none of the {len(skipped)} images in {settings.get('images')} could be used ({_reasons(skipped)}); "
            "check the folder"
        )
    lexicon = sparse.vstack([shard.lexicon for shard in shards], format="csr")
    lexicon.sort_indices()
    dense = np.concatenate([shard.dense for shard in shards]).astype(np.float32)
    documents = lexicon if quantize_scale is None else sparse_vectors.quantize(lexicon, quantize_scale)
    sparse_vectors.write_jsonl(os.path.join(output_dir, sparse_vectors.DOCUMENTS_FILE), documents, vocabulary)
    id_map = {
        "documents": [{"id": i, "key": key} for i, key in enumerate(keys)],
        "skipped": [{"key": key, "reason": reason} for key, reason in skipped],
    }
    _write_json(os.path.join(output_dir, sparse_vectors.ID_MAP_FILE), id_map)
    sparse.save_npz(os.path.join(output_dir, LEXICON_FILE), lexicon)
    np.save(os.path.join(output_dir, DENSE_FILE), dense)
    with open(os.path.join(output_dir, VOCABULARY_FILE), "w", encoding="utf-8") as f:
        f.writelines(word + "\n" for word in vocabulary)
    manifest = {
        "images": len(keys),
        "skipped": len(skipped),
        "skipped_reasons": _reason_counts(skipped),
        "settings": settings | {"quantize_scale": quantize_scale},
        "documents": sparse_vectors.vector_stats(lexicon),
    }
    _write_json(os.path.join(output_dir, MANIFEST_FILE), manifest)
    return manifest


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)


def _reason_counts(skipped: list[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in skipped:
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def _reasons(skipped: list[tuple[str, str]]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in _reason_counts(skipped).items()) or "no images"


@dataclasses.dataclass(frozen=True)
class Hit:
    key: str
    score: float
    words: tuple[tuple[str, float], ...]  # (word, query weight x image weight), heaviest first; empty for dense


class FolderIndex:
    """An index written by `write_index`, searched by a query's lexicon vector (exact inner product, with the words
    that matched) or its global embedding (exact dense inner product)."""

    def __init__(self, index_dir: str):
        manifest_path = os.path.join(index_dir, MANIFEST_FILE)
        if not os.path.isfile(manifest_path):
            raise FolderIndexError(
                f"{index_dir} holds no {MANIFEST_FILE}; build it with python -m ela_jax.retrieval.index "
                "(a stopped build resumes when rerun)"
            )
        with open(manifest_path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        with open(os.path.join(index_dir, sparse_vectors.ID_MAP_FILE), encoding="utf-8") as f:
            self.keys = [document["key"] for document in json.load(f)["documents"]]
        with open(os.path.join(index_dir, VOCABULARY_FILE), encoding="utf-8") as f:
            self.vocabulary = f.read().splitlines()
        self.lexicon = sparse.load_npz(os.path.join(index_dir, LEXICON_FILE)).tocsr()
        self.dense = np.load(os.path.join(index_dir, DENSE_FILE))
        self._sparse = retrievers.ExactSparseIndex(len(self.vocabulary))
        self._sparse.add(self.lexicon)

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    def search_lexicon(self, query: np.ndarray, k: int) -> list[Hit]:
        """The top-k images by lexicon inner product with `query` [|V|], each with its matched words."""
        query_rows = sparse_vectors.sparsify(np.asarray(query, np.float32)[None])
        scores, ids = self._sparse.search(query_rows, min(k, len(self.keys)))
        query_weights = dict(zip(query_rows.indices.tolist(), query_rows.data.tolist()))
        hits = []
        for score, document in zip(scores[0], ids[0]):
            if document == retrievers.PAD_ID:
                continue
            row = self.lexicon[int(document)]
            products = [
                (self.vocabulary[term], query_weights[term] * float(weight))
                for term, weight in zip(row.indices.tolist(), row.data.tolist())
                if term in query_weights
            ]
            products.sort(key=lambda item: -item[1])
            hits.append(Hit(self.keys[int(document)], float(score), tuple(products[:MATCHED_WORDS])))
        return hits

    def search_global(self, query: np.ndarray, k: int) -> list[Hit]:
        """The top-k images by global-embedding inner product (cosine: both sides are unit vectors)."""
        scores = self.dense @ np.asarray(query, np.float32)
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]  # score descending, ties to the lower id
        return [Hit(self.keys[i], float(scores[i]), ()) for i in order]
