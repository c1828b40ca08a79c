"""Image-caption records from the upstream annotation formats, caption cleaning, and the skip counter.

Parsers return `ImageText` records (one per image, every caption of it) and never raise on a bad line or entry: they
count it in a `SkipCounter`, whose warning names the first few offending keys and which stops a source with a clear
error once its skip rate passes `data.max_skip_fraction`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import threading

from ela_jax import paths
from ela_jax.data.sources import csv_header_problem
from ela_jax.errors import ConfigError, TooManySkipsError

log = logging.getLogger(__name__)

# Captions are cut to this many characters before anything else touches them: 4096 characters hold far more than
# BERT's 512 tokens of real text, and a 100k-character caption then costs the tokenizer nothing.
MAX_CAPTION_CHARS = 4096
# The skip rate is judged only after this many records, so one bad record at the start cannot stop a run.
MIN_RECORDS_FOR_SKIP_RATE = 100
WARN_FIRST_KEYS = 5

# What a caption file's skip line says was looked for, and the field names a file needs.
LOOKED_FOR = {
    "jsonl": {"no_image": "no 'image' field", "no_caption": "no 'caption' or 'captions' text"},
    "csv": {"no_image": "empty 'image' column", "no_caption": "empty 'caption' column"},
}
EXPECTED_FIELDS = {"jsonl": "'image' with 'caption' or 'captions'", "csv": "'image' and 'caption'"}

# Karpathy split names -> ours; "restval" (the 30,504 COCO val2014 images outside val/test) joins train, as in every
# paper that reports the 5K test set.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class ImageText:
    key: str  # unique within a dataset; names the record in warnings
    image_path: str
    captions: tuple[str, ...]
    image_id: int


def clean_caption(caption: str | bytes) -> str:
    """UTF-8 text (bad bytes become U+FFFD), cut to MAX_CAPTION_CHARS, whitespace collapsed; '' when empty."""
    if isinstance(caption, bytes):
        caption = caption[: 4 * MAX_CAPTION_CHARS].decode("utf-8", errors="replace")
    return " ".join(str(caption)[:MAX_CAPTION_CHARS].split())


def clean_captions(captions) -> tuple[str, ...]:
    return tuple(text for text in (clean_caption(c) for c in captions) if text)


class SkipCounter:
    """Thread-safe counts of seen and skipped records by reason; warns with the first keys and enforces the rate."""

    def __init__(self, source: str, max_fraction: float, min_records: int = MIN_RECORDS_FOR_SKIP_RATE):
        self.source, self.max_fraction, self.min_records = source, max_fraction, min_records
        self.seen = 0
        self.reasons: dict[str, int] = {}
        self.first_keys: list[str] = []
        self._lock = threading.Lock()

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def count_seen(self, count: int = 1) -> None:
        with self._lock:
            self.seen += count

    def skip(self, key: str, reason: str, detail: str = "", count: int = 1) -> None:
        """Counts `count` skipped records under one key (already counted as seen; e.g. a whole unreadable shard) and
        checks the rate once enough records were seen; `detail` says what was looked for (e.g. the field a line lacks).
        """
        with self._lock:
            self.reasons[reason] = self.reasons.get(reason, 0) + count
            named = f"{key} ({reason}: {detail})" if detail else f"{key} ({reason})"
            if len(self.first_keys) < WARN_FIRST_KEYS and named not in self.first_keys:  # epochs revisit records
                self.first_keys.append(named)
                log.warning("%s: skipped %s", self.source, named)
            elif _is_power_of_two(self.skipped):  # then ever more rarely
                log.warning("%s", self.summary())
        self.check()

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.reasons.items()))
        first = "; ".join(self.first_keys)
        return f"{self.source}: skipped {self.skipped} of {self.seen} records ({reasons}); first: {first}"

    def check(self, final: bool = False) -> None:
        """Raises TooManySkipsError when the skip rate is above max_fraction, judged once min_records were seen; at
        the end (`final`) a source that skipped everything fails at any size, while one bad file of three only warns."""
        judged = self.seen >= self.min_records or (final and self.seen and self.skipped == self.seen)
        if judged and self.skipped / self.seen > self.max_fraction:
            raise TooManySkipsError(
                f"{self.summary()} — {self.skipped / self.seen:.1%} is above data.max_skip_fraction "
                f"{self.max_fraction}; check data.manual_dir and the files named, or raise the limit"
            )

    def __getstate__(self) -> dict:
        # grain worker processes get a copy (their own counts); locks do not pickle.
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def finish(self) -> None:
        """At the end of a source: logs the counts and applies the final check."""
        if self.skipped:
            log.warning("%s", self.summary())
        self.check(final=True)


def _is_power_of_two(count: int) -> bool:
    return count > 0 and count & (count - 1) == 0


def read_karpathy(json_path: str, image_root: str, skips: SkipCounter) -> dict[str, list[ImageText]]:
    """Records per split from a Karpathy `dataset_{coco,flickr8k,flickr30k}.json`: `images[]` with `filename`,
    `filepath` (COCO's train2014/val2014 folder; absent for Flickr), `split`, `sentences[].raw`, `cocoid` or `imgid`.
    Every caption is kept (some COCO images have 6 or 7)."""
    entries = json.loads(paths.read_bytes(json_path).decode("utf-8", errors="replace"))["images"]
    splits: dict[str, list[ImageText]] = {}
    for position, entry in enumerate(entries):
        skips.count_seen()
        split = KARPATHY_SPLITS.get(entry.get("split")) if isinstance(entry, dict) else None
        if split is None or not entry.get("filename"):
            skips.skip(f"images[{position}]", "bad_entry")
            continue
        relative = os.path.join(entry.get("filepath", ""), str(entry["filename"]))
        captions = clean_captions(s.get("raw", "") for s in entry.get("sentences", ()) if isinstance(s, dict))
        if not captions:
            skips.skip(relative, "no_caption")
            continue
        image_id = int(entry.get("cocoid", entry.get("imgid", position)))
        splits.setdefault(split, []).append(ImageText(relative, os.path.join(image_root, relative), captions, image_id))
    return splits


def read_caption_files(paths: list[str], image_root: str, skips: SkipCounter) -> list[ImageText]:
    """Records from `captions.jsonl` files (`{"image": "rel/path.jpg", "caption": "..."}` or `"captions": [...]` per
    line) or CSVs with `image,caption` columns; lines naming the same image are grouped, in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for path in paths:
        kind = "jsonl" if path.endswith(".jsonl") else "csv"
        rows = _jsonl_rows(path, skips) if kind == "jsonl" else _csv_rows(path, skips)
        lines, missing, fields = 0, {}, set()
        for line_key, image, captions, line_fields in rows:
            lines += 1
            fields.update(line_fields)
            captions = clean_captions(captions)
            if not image or not captions:
                reason = "no_image" if not image else "no_caption"
                missing[reason] = missing.get(reason, 0) + 1
                skips.skip(line_key, reason, LOOKED_FOR[kind][reason])
                continue
            grouped.setdefault(os.path.normpath(image), []).extend(captions)
        _check_mostly_missing(path, kind, lines, missing, fields)
    return [
        ImageText(image, os.path.join(image_root, image), tuple(captions), index)
        for index, (image, captions) in enumerate(grouped.items())
    ]


def _check_mostly_missing(path: str, kind: str, lines: int, missing: dict[str, int], fields: set[str]) -> None:
    """Stops on a small caption file most of whose lines lack the same field: its field names are wrong, and the
    skip rate, judged only from MIN_RECORDS_FOR_SKIP_RATE records on, would let training run on the few lines left."""
    if not missing or lines >= MIN_RECORDS_FOR_SKIP_RATE:
        return
    reason, count = max(missing.items(), key=lambda item: item[1])
    if 2 * count <= lines:
        return
    raise TooManySkipsError(
        f"{path}: {count} of {lines} lines skipped ({reason}: {LOOKED_FOR[kind][reason]}); the lines have the "
        f"{'fields' if kind == 'jsonl' else 'columns'} {sorted(fields)}, expected {EXPECTED_FIELDS[kind]}; "
        "rename them or fill them in"
    )


def _jsonl_rows(path: str, skips: SkipCounter):
    with paths.open_binary(path) as f:
        for number, raw_line in enumerate(f, start=1):
            if not raw_line.strip():
                continue
            skips.count_seen()
            key = f"{os.path.basename(path)}:{number}"
            try:
                row = json.loads(raw_line.decode("utf-8", errors="replace"))
            except json.JSONDecodeError:
                skips.skip(key, "bad_line")
                continue
            if not isinstance(row, dict):
                skips.skip(key, "bad_line")
                continue
            captions = row.get("captions", [row["caption"]] if "caption" in row else [])
            captions = [captions] if isinstance(captions, str) else captions
            yield key, str(row.get("image") or ""), [c for c in captions if isinstance(c, str)], row.keys()


def _csv_rows(path: str, skips: SkipCounter):
    with paths.open_text(path) as f:
        problem = csv_header_problem(path)
        if problem:
            raise ConfigError(problem)
        reader = csv.DictReader(f)
        for row in reader:
            skips.count_seen()
            key = f"{os.path.basename(path)}:{reader.line_num}"
            yield key, (row.get("image") or "").strip(), [row.get("caption") or ""], reader.fieldnames
