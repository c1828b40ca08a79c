"""WebDataset / img2dataset shards (`NNNNN.tar` holding `key.jpg` + `key.txt` or `key.json`) as a random-access
grain source for pre-training.

Each host indexes the tar headers of its shards once (member offsets; no data is read) and then reads samples with
`pread`, so the grain pipeline shuffles, shards, checkpoints and resumes exactly as it does over ArrayRecord.

Host split: with at least as many shards as hosts, host h takes whole shards `h::hosts` (it indexes only those);
with fewer shards than hosts every host indexes all shards and takes samples `h::hosts`, so no host is ever left
without data. Workers (grain threads, or processes with `data.num_workers`) draw sample indices from the host's
shuffled index stream, never whole shards, so no worker is idle either. The stream repeats forever, so hosts whose
shards differ in size never wait on each other at an epoch end.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import os
import tarfile

import numpy as np

from ela_jax import paths as storage
from ela_jax.data import records
from ela_jax.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "json")
SAMPLE_FIELDS = [
    ("shard", np.int32),
    ("header", np.int64),  # offset of the image member's tar header (for its name in warnings)
    ("image_offset", np.int64),
    ("image_size", np.int64),
    ("caption_offset", np.int64),
    ("caption_size", np.int32),
    ("caption_is_json", np.bool_),
]


def shard_paths(shard_dir: str) -> list[str]:
    return storage.glob(shard_dir, "*.tar")


def split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name; the rest is the field."""
    directory, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(directory, stem), extension.lower()


def index_shard(path: str, shard: int, skips: records.SkipCounter, keys: dict | None = None) -> np.ndarray:
    """Samples of one tar (structured array of SAMPLE_FIELDS); a key without an image or a caption, and the rest of a
    truncated tar, are counted in `skips`, never raised. An unreadable tar (or the unread rest of one) is counted as
    one record; given `keys` (shard -> (keys read, why the tar is damaged or '')), `count_lost_samples` counts it in
    the samples it lost instead."""
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        file_size = storage.size(path)
        with storage.open_binary(path) as tar_file, tarfile.open(fileobj=tar_file, mode="r:") as archive:
            for member in archive:
                if member.isfile():
                    key, extension = split_key(member.name)
                    members.setdefault(key, {})[extension] = member
            stopped_at = archive.offset
        unread = _unreadable_header(path, stopped_at) if stopped_at < file_size else ""
        if unread:
            raise tarfile.ReadError(f"{unread} at byte {stopped_at} of {file_size}")
    except (tarfile.TarError, OSError, EOFError) as error:
        damage = f"{os.path.basename(path)} after {len(members)} keys: {type(error).__name__} {error}"
        if keys is None:
            skips.count_seen()
            skips.skip(damage, "bad_tar")
    else:
        damage = ""
    if keys is not None:
        keys[shard] = (len(members), damage)
    samples = []
    for key, fields in members.items():
        skips.count_seen()
        image = next((fields[e] for e in IMAGE_EXTENSIONS if e in fields), None)
        caption = next(((fields[e], e == "json") for e in CAPTION_EXTENSIONS if e in fields), None)
        if image is None or caption is None:
            reason, extensions = ("no_image", IMAGE_EXTENSIONS) if image is None else ("no_caption", CAPTION_EXTENSIONS)
            looked_for = "no " + " / ".join(f"{key}.{extension}" for extension in extensions)
            skips.skip(f"{os.path.basename(path)}:{key}", reason, looked_for)
            continue
        if max(m.offset_data + m.size for m in (image, caption[0])) > file_size:
            # tarfile stops quietly at a truncated end; members whose data runs past it are cut.
            skips.skip(f"{os.path.basename(path)}:{key}", "truncated")
            continue
        samples.append(
            (shard, image.offset, image.offset_data, image.size, caption[0].offset_data, caption[0].size, caption[1])
        )
    return np.array(samples, dtype=SAMPLE_FIELDS)


def count_lost_samples(keys: dict[int, tuple[int, str]], skips: records.SkipCounter) -> None:
    """Counts what each damaged shard lost in samples, so data.max_skip_fraction compares samples with samples: a
    shard held about as many keys as the median intact shard (img2dataset writes equal shards), less those read before
    the damage; at least one per damaged shard (and one where no shard is intact to compare with)."""
    intact = [count for count, damage in keys.values() if not damage]
    typical = int(np.median(intact)) if intact else 0
    for shard, (read, why) in sorted(keys.items()):
        if not why:
            continue
        lost = max(typical - read, 1)
        skips.count_seen(lost)
        skips.skip(why, "bad_tar", count=lost)


def _unreadable_header(path: str, offset: int) -> str:
    """Why tarfile stopped early at `offset` ('' at a proper end). Past the first member it ends quietly at a header it
    cannot read (cut short or garbled), as at the zero blocks that end an archive; only the bytes there tell them
    apart. A tar cut exactly between members has no end blocks and cannot be told from a whole one."""
    block = storage.read_range(path, offset, tarfile.BLOCKSIZE)
    if not block.strip(b"\0"):
        return ""
    return "tar header cut short" if len(block) < tarfile.BLOCKSIZE else "unreadable tar header"


def host_samples(
    paths: list[str], process_index: int, process_count: int, skips: records.SkipCounter, num_threads: int = 4
) -> tuple[list[str], np.ndarray]:
    """(the host's shard paths, its samples); see the module docstring for the split."""
    if not paths:
        raise ConfigError("no .tar shards found; point data.manual_dir at a folder of NNNNN.tar files")
    whole_shards = len(paths) >= process_count
    mine = paths[process_index::process_count] if whole_shards else paths
    keys: dict[int, tuple[int, str]] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        indexed = list(pool.map(lambda item: index_shard(item[1], item[0], skips, keys), enumerate(mine)))
    count_lost_samples(keys, skips)
    samples = np.concatenate(indexed) if indexed else np.zeros(0, SAMPLE_FIELDS)
    if not whole_shards:
        samples = samples[process_index::process_count]
    if len(samples) == 0:
        skips.finish()  # a host whose every record was skipped says what was wrong with them
        raise ConfigError(
            f"host {process_index} of {process_count} has no samples in {len(mine)} shard(s) of {len(paths)}; "
            "the shards hold fewer usable samples than there are hosts"
        )
    log.info(
        "webdataset: host %d/%d reads %d samples from %d of %d shards (%s)",
        process_index,
        process_count,
        len(samples),
        len(mine),
        len(paths),
        "whole shards" if whole_shards else "samples split within shards",
    )
    return mine, samples


class ShardSource:
    """grain RandomAccessDataSource over indexed tar members: record i is {"image": bytes, "captions": [str], "key"}.
    A caption that cannot be read gives `captions == []`, which the pipeline counts and skips."""

    def __init__(self, paths: list[str], samples: np.ndarray, caption_field: str = "caption"):
        self.paths, self.samples, self.caption_field = paths, samples, caption_field

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        path = self.paths[int(sample["shard"])]
        # One read from the member header to the end of the later member (the key's members sit together in the tar):
        # one ranged request to object storage, not three. No cache of descriptors: a host may hold more shards than
        # its open-file limit, and the open costs microseconds next to a JPEG decode.
        header = int(sample["header"])
        image_at, caption_at = int(sample["image_offset"]), int(sample["caption_offset"])
        image_size, caption_size = int(sample["image_size"]), int(sample["caption_size"])
        start = min(header, image_at, caption_at)
        span = storage.read_range(
            path, start, max(header + tarfile.BLOCKSIZE, image_at + image_size, caption_at + caption_size) - start
        )
        header_block = span[header - start : header - start + tarfile.BLOCKSIZE]
        image = span[image_at - start : image_at - start + image_size]
        caption = span[caption_at - start : caption_at - start + caption_size]
        captions = self._captions(caption, bool(sample["caption_is_json"]))
        return {"image": image, "captions": captions, "key": f"{os.path.basename(path)}:{_member_key(header_block)}"}

    def _captions(self, raw: bytes, is_json: bool) -> list[str]:
        if not is_json:
            return [records.clean_caption(raw)]
        try:
            value = json.loads(raw.decode("utf-8", errors="replace")).get(self.caption_field)
        except (json.JSONDecodeError, AttributeError):
            return []
        return [records.clean_caption(value)] if isinstance(value, (str, bytes)) else []

    def __repr__(self) -> str:  # grain logs its sources; keep it short
        return f"ShardSource({len(self.paths)} shards, {len(self.samples)} samples)"


def _member_key(header: bytes) -> str:
    """The sample key from the image member's tar header (names the record in skip warnings)."""
    try:
        return split_key(tarfile.TarInfo.frombuf(header, "utf-8", "replace").name)[0]
    except tarfile.TarError:
        return "?"


def shard_source(data_config, shard_dir: str, process_index: int, process_count: int) -> ShardSource:
    skips = records.SkipCounter("webdataset index", data_config.max_skip_fraction)
    paths, samples = host_samples(shard_paths(shard_dir), process_index, process_count, skips, data_config.num_threads)
    skips.finish()
    return ShardSource(paths, samples, data_config.caption_field)


def tar_shard(path: str, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A WebDataset shard: for each (key, {extension: bytes}) one member `key.extension`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, fields in samples:
            for extension, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
