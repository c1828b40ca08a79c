"""The data sources a config can name and the files each needs in its manual_dir (checked by ela_jax.validation, before
anything is prepared or compiled). Imports nothing heavy."""

from __future__ import annotations

import csv
import os

from ela_jax import paths
from ela_jax.errors import ConfigError, check_choice

WORLDS = ("shapes", "scenes", "cues")  # data.world: the embedded world data.name="world" generates
DATA_NAMES = ("world", "coco", "flickr30k", "folder", "webdataset", "mixture")
MIXABLE_NAMES = ("coco", "flickr30k", "folder", "webdataset")
EVAL_NAMES = ("world", "coco", "flickr30k", "folder")  # sources with a test split
KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
FLICKR_IMAGE_DIR = "flickr30k-images"
# Caption files of a folder source and the split each one feeds.
FOLDER_SPLIT_FILES = {"captions": "train", "train": "train", "validation": "validation", "test": "test"}
FOLDER_EXTENSIONS = (".jsonl", ".csv")
CSV_COLUMNS = ("image", "caption")  # the header a folder's caption CSV needs
REQUIRED_ENTRIES = {
    "coco": (KARPATHY_FILES["coco"], "train2014", "val2014"),
    "flickr30k": (KARPATHY_FILES["flickr30k"], FLICKR_IMAGE_DIR),
}
CONTENTS = {
    "coco": "dataset_coco.json (Karpathy splits), train2014/ and val2014/",
    "flickr30k": "dataset_flickr30k.json (Karpathy splits) and flickr30k-images/",
    "folder": "captions.jsonl or captions.csv (and optionally test.jsonl / test.csv), image paths relative to it",
    "webdataset": "NNNNN.tar shards (key.jpg + key.txt or key.json)",
}


def prepared_data_dir(data) -> str:
    """Where TFDS keeps prepared ArrayRecord copies: `data.dir`, else $ELA_JAX_DATA_DIR, else a folder in the cache."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "ela_jax", "tfds")
    return data.dir or os.environ.get("ELA_JAX_DATA_DIR", default)


def check_prepared_data_dir(data) -> None:
    """ConfigError when the prepared-data folder is a URL: ArrayRecord's reader and writer open local files only."""
    data_dir = prepared_data_dir(data)
    if paths.is_remote(data_dir):
        raise ConfigError(
            f"data.dir (or $ELA_JAX_DATA_DIR) {data_dir!r} is a URL, but TFDS prepares and reads ArrayRecord files "
            "through the local file system only; give a local folder, or mount the bucket with gcsfuse and give the "
            "mounted path (data.manual_dir, unlike data.dir, may be a gs:// URL)"
        )


def missing_entries(name: str, manual_dir: str, split: str) -> list[str]:
    """What `manual_dir` lacks for reading `split` of source `name` (empty when it is usable)."""
    if name == "folder":
        stems = [stem for stem, stem_split in FOLDER_SPLIT_FILES.items() if stem_split == split]
        files = [stem + extension for stem in stems for extension in FOLDER_EXTENSIONS]
        present = any(paths.is_file(os.path.join(manual_dir, f)) for f in files)
        return [] if present else [" or ".join(files)]
    if name == "webdataset":
        return [] if paths.glob(manual_dir, "*.tar") else ["*.tar shards"]
    return [entry for entry in REQUIRED_ENTRIES[name] if not paths.exists(os.path.join(manual_dir, entry))]


def csv_header_problem(path: str) -> str:
    """Why the caption CSV at `path` cannot be read ('' when its header names the CSV_COLUMNS)."""
    with paths.open_text(path) as f:
        header = next(csv.reader(f), [])
    if set(CSV_COLUMNS) <= set(header):
        return ""
    return (
        f"{path} needs a header line naming the columns {','.join(CSV_COLUMNS)}, got {header}; "
        f"make its first line {','.join(CSV_COLUMNS)} (or rename the columns)"
    )


def check_manual_dir(name: str, manual_dir: str, key: str, split: str) -> None:
    """Raises ConfigError (one line) when `manual_dir` cannot serve `split` of source `name`."""
    if not manual_dir:
        raise ConfigError(f"data source {name!r} needs {key}: the folder holding {CONTENTS[name]}")
    if name == "webdataset" and paths.is_remote(manual_dir):  # shards stream from object storage, which has no folders
        if not paths.glob(manual_dir, "*.tar"):
            raise ConfigError(f"{key}={manual_dir!r} holds no *.tar shards; it should hold {CONTENTS[name]}")
        return
    if not paths.is_remote(manual_dir) and not os.path.isdir(manual_dir):  # a bucket's prefix is no folder to check
        raise ConfigError(f"{key}={manual_dir!r} is not a directory; it should hold {CONTENTS[name]}")
    missing = missing_entries(name, manual_dir, split)
    if missing:
        raise ConfigError(
            f"{key}={manual_dir!r} lacks {', '.join(missing)} for the {split} split; "
            f"source {name!r} needs {CONTENTS[name]}"
        )
    if name == "folder":
        for stem, stem_split in FOLDER_SPLIT_FILES.items():
            path = os.path.join(manual_dir, stem + ".csv")
            problem = csv_header_problem(path) if stem_split == split and paths.is_file(path) else ""
            if problem:
                raise ConfigError(problem)


def parse_mixture_entry(entry: str) -> tuple[str, str, float]:
    """'name:manual_dir:weight' (a `data.train` entry) -> (name, manual_dir, weight); ValueError says what is wrong."""
    name, _, rest = entry.partition(":")
    manual_dir, _, weight = rest.rpartition(":")
    if name not in MIXABLE_NAMES or not manual_dir:
        raise ValueError(f"data.train entry {entry!r} is not 'name:manual_dir:weight' with name in {MIXABLE_NAMES}")
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"data.train entry {entry!r} has weight {weight!r}, not a number") from None
    if value <= 0:
        raise ValueError(f"data.train entry {entry!r} needs a positive weight")
    return name, manual_dir, value


def validate_section(data) -> None:
    """Raises ConfigError when the `data` section names an unknown source, lacks its files or has an impossible value."""
    check_choice(data.name, DATA_NAMES, "data.name")
    check_choice(data.world, WORLDS, "data.world")
    check_prepared_data_dir(data)
    if data.name == "mixture":
        _validate_mixture(data.train)
    elif data.train:
        raise ConfigError(
            f"data.train lists sources, which only data.name='mixture' reads; got data.name={data.name!r}"
        )
    elif data.name != "world":
        check_manual_dir(data.name, data.manual_dir, "data.manual_dir", "train")
    if data.eval_name:
        check_choice(data.eval_name, EVAL_NAMES, "data.eval_name")
        if data.eval_name == "world" and data.name != "world":  # found at the final evaluation otherwise
            raise ConfigError(
                f"data.eval_name='world' evaluates on the embedded world, which a data.name={data.name!r} run does not "
                "read; set data.eval_name to coco, flickr30k or folder, with data.eval_manual_dir"
            )
        if data.eval_name != "world":
            check_manual_dir(data.eval_name, data.eval_manual_dir, "data.eval_manual_dir", "test")
    elif data.name in ("coco", "flickr30k"):  # evaluation reads the training source's test split (a folder's is
        check_manual_dir(data.name, data.manual_dir, "data.manual_dir", "test")  # optional: then no evaluation)
    elif data.name in ("webdataset", "mixture"):
        raise ConfigError(
            f"data.name={data.name} has no test split to evaluate on; set data.eval_name (coco, flickr30k, folder) "
            "and data.eval_manual_dir"
        )
    if not 0.0 <= data.max_skip_fraction < 1.0:
        raise ConfigError(f"data.max_skip_fraction must lie in [0, 1), got {data.max_skip_fraction}")
    low, high = data.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {tuple(data.crop_scale)}")
    if data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {data.num_workers}")


def _validate_mixture(entries) -> None:
    if not entries:
        raise ConfigError("data.name='mixture' needs data.train entries 'name:manual_dir:weight'")
    for entry in entries:
        try:
            name, manual_dir, _ = parse_mixture_entry(entry)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        check_manual_dir(name, manual_dir, f"data.train entry {entry!r}: manual_dir", "train")
