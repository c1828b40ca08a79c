"""Small generated datasets in the exact upstream layouts: COCO and Flickr30K Karpathy JSON with image folders, an
image-text folder (jsonl / csv), and WebDataset tar shards. Image `tag` t is a flat colour (red = 20 t), and every
caption of it contains "photo t", so a test can pair pixels and captions back up (colours repeat after 13 tags)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

from ela_jax.data.webdataset import tar_shard

TAG_STEP = 20


def jpeg_bytes(tag: int, size: tuple[int, int] = (48, 36), mode: str = "RGB", **save_options) -> bytes:
    """A flat image of colour (20 (tag mod 13), 100, 180) with light noise, encoded as JPEG."""
    rng = np.random.default_rng(tag)
    pixels = np.empty((size[1], size[0], 3), np.float64)
    pixels[:] = (TAG_STEP * (tag % 13), 100, 180)
    pixels += rng.normal(0, 2, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **save_options)
    return buffer.getvalue()


def tag_of_pixels(pixels: np.ndarray) -> int:
    return int(round(float(pixels[..., 0].mean()) / TAG_STEP))


def tag_of_caption(caption: str) -> int:
    words = caption.split()
    return int(words[words.index("photo") + 1])


def captions_for(tag: int, count: int) -> list[str]:
    return [f"caption {k} of photo {tag} with  spaces " for k in range(count)]


def write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def karpathy_entry(tag: int, split: str, filename: str, captions: list[str], filepath: str | None = None) -> dict:
    """One `images[]` entry with the upstream field names (COCO has filepath and cocoid, Flickr imgid only)."""
    entry = {
        "filename": filename,
        "imgid": tag,
        "split": split,
        "sentids": list(range(tag * 10, tag * 10 + len(captions))),
        "sentences": [
            {"tokens": c.lower().split(), "raw": c, "imgid": tag, "sentid": tag * 10 + k}
            for k, c in enumerate(captions)
        ],
    }
    if filepath is not None:
        entry["filepath"] = filepath
        entry["cocoid"] = 100_000 + tag
    return entry


# COCO fixture: split -> number of images; test image 0 of the test split carries 7 captions (the real test set
# has some images with 6 or 7, 25,010 captions over 5,000 images).
COCO_LAYOUT = {"train": 3, "restval": 2, "val": 2, "test": 3}
COCO_EXTRA_CAPTIONS = 2


def write_coco(root: str) -> dict[str, list[int]]:
    """dataset_coco.json + train2014/ + val2014/; returns split (ours) -> tags."""
    entries, tags, tag = [], {}, 0
    ours = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
    for split, count in COCO_LAYOUT.items():
        for position in range(count):
            folder = "train2014" if split == "train" else "val2014"
            filename = f"COCO_{folder}_{100_000 + tag:012d}.jpg"
            extra = COCO_EXTRA_CAPTIONS if split == "test" and position == 0 else 0
            entries.append(karpathy_entry(tag, split, filename, captions_for(tag, 5 + extra), folder))
            write_file(os.path.join(root, folder, filename), jpeg_bytes(tag))
            tags.setdefault(ours[split], []).append(tag)
            tag += 1
    with open(os.path.join(root, "dataset_coco.json"), "w") as f:
        json.dump({"images": entries, "dataset": "coco"}, f)
    return tags


def write_flickr30k(root: str, layout: dict[str, int] | None = None) -> dict[str, list[int]]:
    """dataset_flickr30k.json + flickr30k-images/; returns split (ours) -> tags."""
    layout = layout or {"train": 3, "val": 1, "test": 2}
    entries, tags, tag = [], {}, 0
    ours = {"train": "train", "val": "validation", "test": "test"}
    for split, count in layout.items():
        for _ in range(count):
            filename = f"{1_000_000 + tag}.jpg"
            entries.append(karpathy_entry(tag, split, filename, captions_for(tag, 5)))
            write_file(os.path.join(root, "flickr30k-images", filename), jpeg_bytes(tag))
            tags.setdefault(ours[split], []).append(tag)
            tag += 1
    with open(os.path.join(root, "dataset_flickr30k.json"), "w") as f:
        json.dump({"images": entries, "dataset": "flickr30k"}, f)
    return tags


def write_jsonl(path: str, rows: list) -> None:
    """Rows are dicts (JSON lines) or raw bytes (written as they are, for damaged lines)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else json.dumps(row).encode())
            f.write(b"\n")


def write_shards(
    root: str, num_shards: int, per_shard: int, caption_format: str = "txt", first_tag: int = 0
) -> list[int]:
    """img2dataset-style shards 00000.tar ...; returns all tags in shard order."""
    tags = []
    for shard in range(num_shards):
        samples = []
        for position in range(per_shard):
            tag = first_tag + shard * per_shard + position
            caption = captions_for(tag, 1)[0]
            text = caption.encode() if caption_format == "txt" else json.dumps({"caption": caption}).encode()
            samples.append((f"{shard:05d}{position:04d}", {"jpg": jpeg_bytes(tag), caption_format: text}))
            tags.append(tag)
        tar_shard(os.path.join(root, f"{shard:05d}.tar"), samples)
    return tags


def damaged_shards(root: str) -> None:
    """One shard with every per-sample damage, and a tar truncated in the middle."""
    good = [(f"good{t}", {"jpg": jpeg_bytes(t), "txt": f"photo {t}".encode()}) for t in range(6)]
    bad = [
        ("corrupt", {"jpg": b"not a jpeg at all", "txt": b"photo 9"}),
        ("zero", {"jpg": b"", "txt": b"photo 9"}),
        ("nocaption", {"jpg": jpeg_bytes(9)}),
        ("noimage", {"txt": b"photo 9"}),
        ("emptytext", {"jpg": jpeg_bytes(9), "txt": b"  "}),
        ("badjson", {"jpg": jpeg_bytes(9), "json": b"{oops"}),
        ("latin1", {"jpg": jpeg_bytes(7), "txt": b"photo 7 caf\xe9"}),  # repaired, kept
        ("longtext", {"jpg": jpeg_bytes(8), "txt": b"photo 8 " + b"y" * 100_000}),  # cut, kept
    ]
    tar_shard(os.path.join(root, "00000.tar"), good + bad)
    for shard, cut_member in (("00001", ".jpg"), ("00002", ".txt")):  # cut inside the last image / caption
        path = os.path.join(root, f"{shard}.tar")
        tar_shard(path, good)
        with tarfile.open(path) as archive:
            last = [member for member in archive if member.name.endswith(cut_member)][-1]
        with open(path, "r+b") as f:
            f.truncate(last.offset_data + last.size // 2)  # the samples before the cut still count


def damaged_caption_folder(root: str) -> None:
    """A folder source: a train split (captions.jsonl) with a corrupt, a cut, an empty and a missing image, a bad line
    and lines without image or caption; a test split (test.csv) with a missing image."""
    for tag in range(6):
        write_file(os.path.join(root, "imgs", f"{tag}.jpg"), jpeg_bytes(tag))
    damaged = {"corrupt.jpg": b"not a jpeg at all", "cut.jpg": jpeg_bytes(6)[:200], "zero.jpg": b""}
    for name, data in damaged.items():
        write_file(os.path.join(root, "imgs", name), data)
    lines = [{"image": f"imgs/{tag}.jpg", "captions": captions_for(tag, 2)} for tag in range(4)]
    lines += [{"image": f"imgs/{name}", "caption": "photo 9"} for name in [*damaged, "missing.jpg"]]
    lines += [b"{not json", {"caption": "photo 9 without an image"}, {"image": "imgs/0.jpg", "captions": []}]
    write_jsonl(os.path.join(root, "captions.jsonl"), lines)
    rows = [f"imgs/{tag}.jpg,{caption}" for tag in (4, 5) for caption in captions_for(tag, 2)]
    with open(os.path.join(root, "test.csv"), "w") as f:
        f.write("\n".join(["image,caption", *rows, "imgs/gone.jpg,photo 9"]) + "\n")
