"""Every kind of damaged input the issue lists: each is converted, truncated, or skipped with a count (the warning
names the key), and a source that skips too much stops with a clear error; nothing raises anything else."""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from ela_jax.data import captions_tfds, images, pipeline, records, tokenizer, webdataset
from tests import data_fixtures as fixtures
from tests.helpers import make_tiny_config


def encode(image: Image.Image, format_: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format_, **options)
    return buffer.getvalue()


def rgb_image(colour=(200, 30, 30), size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_greyscale_cmyk_and_one_bit_images_become_rgb():
    grey = images.decode(encode(Image.new("L", (20, 10), 90), "PNG"))
    assert grey.shape == (10, 20, 3) and grey.dtype == np.uint8 and (grey == 90).all()
    cmyk = images.decode(encode(rgb_image().convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == (30, 40, 3) and cmyk[..., 0].mean() > 150 > cmyk[..., 1].mean()
    one_bit = images.decode(encode(Image.new("1", (8, 8), 1), "PNG"))
    assert (one_bit == 255).all()


def test_sixteen_bit_greyscale_is_rescaled_not_clipped():
    pixels = np.full((6, 6), 32768, np.uint16)  # mid-grey in 16 bits
    decoded = images.decode(encode(Image.fromarray(pixels), "PNG"))
    assert decoded.shape == (6, 6, 3) and abs(int(decoded[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    decoded = images.decode(encode(rgba, "PNG"))
    assert tuple(decoded[0, 0]) == (10, 20, 30) and tuple(decoded[3, 3]) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    decoded = images.decode(encode(palette, "PNG", transparency=0))
    assert tuple(decoded[0, 0]) == (255, 255, 255) and tuple(decoded[1, 1]) == (250, 0, 0)


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 high, red on the left, blue on the right, EXIF orientation 6 (display rotated 90 CW)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (220, 0, 0)
    pixels[:, 20:] = (0, 0, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def test_exif_orientation_is_applied():
    decoded = images.decode(exif_rotated_jpeg())
    assert decoded.shape == (40, 20, 3)  # portrait after rotation
    assert decoded[:10, :, 0].mean() > 150 and decoded[-10:, :, 2].mean() > 150  # left edge is now the top


def test_huge_images_are_reduced_on_decode_or_skipped(monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 2_500)
    reduced = images.decode(encode(rgb_image(size=(200, 150)), "JPEG"))  # JPEG: decoded at 1/4 scale
    assert reduced.shape[0] * reduced.shape[1] <= 2_500 and reduced[..., 0].mean() > 150
    with pytest.raises(images.ImageDecodeError) as error:
        images.decode(encode(rgb_image(size=(200, 150)), "PNG"))
    assert error.value.reason == "too_large"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL's own bomb guard (errors at twice this)
    with pytest.raises(images.ImageDecodeError) as error:
        images.decode(encode(rgb_image(size=(100, 100)), "PNG"))
    assert error.value.reason == "too_large"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"\x00garbage, not an image" * 10, "corrupt"),
        (encode(rgb_image(size=(300, 200)), "JPEG")[:400], "corrupt"),  # truncated mid-scan
        (encode(rgb_image(size=(300, 200)), "PNG")[:-30], "corrupt"),
    ],
)
def test_unusable_bytes_raise_a_typed_error(data, reason):
    with pytest.raises(images.ImageDecodeError) as error:
        images.decode(data)
    assert error.value.reason == reason


def test_captions_are_repaired_or_emptied_cheaply():
    assert records.clean_caption(b"caf\xe9 \xff ok") == "caf\ufffd \ufffd ok"  # Latin-1 bytes: not UTF-8
    assert records.clean_caption("  \n\t ") == ""
    huge = records.clean_caption("word " * 20_000)  # 100k characters
    assert len(huge) <= records.MAX_CAPTION_CHARS and huge.startswith("word word")
    assert records.clean_captions(["", "  ", "a cat"]) == ("a cat",)


def damaged_folder(root: str, monkeypatch) -> dict[str, str]:
    """A folder source with one image of every damage kind; returns key -> expected outcome."""
    monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 20_000)
    files = {
        "good.jpg": fixtures.jpeg_bytes(1),
        "grey.png": encode(Image.new("L", (30, 30), 90), "PNG"),
        "cmyk.jpg": encode(rgb_image().convert("CMYK"), "JPEG"),
        "rgba.png": encode(Image.new("RGBA", (30, 30), (0, 0, 0, 0)), "PNG"),
        "sixteen.png": encode(Image.fromarray(np.full((30, 30), 40000, np.uint16)), "PNG"),
        "palette.gif": encode(Image.new("P", (30, 30), 3), "GIF"),
        "rotated.jpg": exif_rotated_jpeg(),
        "huge.jpg": encode(rgb_image(size=(400, 300)), "JPEG"),  # over the (patched) cap: decoded at 1/2 or 1/4
        "huge.png": encode(rgb_image(size=(400, 300)), "PNG"),  # over the cap, no reduced decode: skipped
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg" * 5,
        "truncated.jpg": encode(rgb_image(size=(300, 200)), "JPEG")[:500],
        "zero.jpg": b"",
    }
    for name, data in files.items():
        fixtures.write_file(os.path.join(root, name), data)
    lines = [{"image": name, "caption": f"a picture of {name}"} for name in files]
    lines += [
        {"image": "missing.jpg", "caption": "no such file"},
        {"image": "good.jpg", "caption": "   "},  # empty caption: dropped, the image keeps its other caption
        {"image": "good.jpg", "caption": "x" * 100_000},  # 100k characters: cut
        {"image": "nocaption.jpg", "captions": []},
        {"caption": "a line without an image"},
        b"{not json",
        b'{"image": "good.jpg", "caption": "caf\xe9 latin-1"}',  # not UTF-8: repaired
    ]
    fixtures.write_file(os.path.join(root, "nocaption.jpg"), fixtures.jpeg_bytes(2))
    fixtures.write_jsonl(os.path.join(root, "captions.jsonl"), lines)
    skipped = {"missing.jpg": "missing", "huge.png": "too_large", "corrupt.jpg": "corrupt"}
    skipped.update({"truncated.jpg": "corrupt", "zero.jpg": "empty"})
    return {name: skipped.get(name, "kept") for name in files} | {"missing.jpg": "missing"}


def test_folder_build_keeps_convertible_images_and_counts_every_skip(tmp_path, monkeypatch, caplog):
    outcomes = damaged_folder(str(tmp_path), monkeypatch)
    # 5 of 13 images skipped is above the default 5% limit, which is judged only from 100 records on.
    config = make_tiny_config(**{"data.name": "folder", "data.manual_dir": str(tmp_path)})
    with caplog.at_level(logging.WARNING):
        builder = captions_tfds.captions_builder("folder", config.data, str(tmp_path))
    source = builder.as_data_source(split="train")
    kept = {r["key"].decode(): [c.decode() for c in r["captions"]] for r in (source[i] for i in range(len(source)))}
    assert set(kept) == {name for name, outcome in outcomes.items() if outcome == "kept"}
    assert kept["good.jpg"][0] == "a picture of good.jpg" and len(kept["good.jpg"]) == 3
    assert len(kept["good.jpg"][1]) == records.MAX_CAPTION_CHARS and kept["good.jpg"][2] == "caf\ufffd latin-1"
    log_text = caplog.text
    for name, outcome in outcomes.items():
        if outcome != "kept":
            assert f"{name} ({outcome})" in log_text  # the summary names each of the first keys with its reason
    summary = "ela_image_text_folder[train]: skipped 5 of 13 records (corrupt: 2, empty: 1, missing: 1, too_large: 1)"
    assert summary in log_text
    assert "skipped 4 of 19 records (bad_line: 1, no_caption: 2, no_image: 1)" in log_text  # annotation lines
    retrieval = pipeline.retrieval_set(config.data, "train")  # the same images decode at read time
    assert len(retrieval.images) == len(kept) and retrieval.images.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize(
    "good, missing, expected",
    [
        (1, 119, "skipped 99 of 100 records \\(missing: 99\\).* 99.0% is above"),  # stops as soon as it is judged
        (0, 2, "skipped 2 of 2 records \\(missing: 2\\).* 100.0% is above"),  # nothing usable: fails at any size
    ],
)
def test_a_source_past_max_skip_fraction_stops_with_a_clear_error(tmp_path, good, missing, expected):
    fixtures.write_file(str(tmp_path / "good.jpg"), fixtures.jpeg_bytes(1))
    lines = [{"image": "good.jpg", "caption": "fine"}] * good
    lines += [{"image": f"gone{k}.jpg", "caption": "missing"} for k in range(missing)]
    fixtures.write_jsonl(str(tmp_path / "captions.jsonl"), lines)
    config = make_tiny_config(
        **{"data.name": "folder", "data.manual_dir": str(tmp_path), "data.max_skip_fraction": 0.1}
    )
    with pytest.raises(records.TooManySkipsError, match=expected + " data.max_skip_fraction 0.1"):
        captions_tfds.captions_builder("folder", config.data, str(tmp_path))


def test_damaged_shards_stream_good_batches_and_count_skips(tmp_path, caplog):
    fixtures.damaged_shards(str(tmp_path))
    config = make_tiny_config(
        **{"data.name": "webdataset", "data.manual_dir": str(tmp_path), "data.max_skip_fraction": 0.6, "batch_size": 4}
    )
    tok = tokenizer.from_config(config.tokenizer, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        stream = iter(pipeline.train_dataset(config, tok, 0, 1))
        batches = [next(stream) for _ in range(6)]
    assert all(b["images"].shape == (4, 32, 32, 3) and b["token_ids"].shape == (4, 16) for b in batches)
    index_summary = next(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("webdataset index: skipped 20")
    )
    # Two tars cut after 6 keys beside a whole one of 14: each lost the 8 keys a whole shard holds beyond those read.
    assert "skipped 20 of 42 records (bad_tar: 16, no_caption: 2, no_image: 1, truncated: 1)" in index_summary
    for named in ("badjson (no_caption)", "zero (empty)", "corrupt (corrupt)", "emptytext (no_caption)"):
        assert f"webdataset train (host 0): skipped 00000.tar:{named}" in caplog.text  # 24 good pairs: a full epoch


def test_shards_of_only_broken_images_stop_the_stream_with_a_clear_error(tmp_path):
    broken = [(f"k{k:03d}", {"jpg": b"", "txt": b"photo"}) for k in range(records.MIN_RECORDS_FOR_SKIP_RATE + 20)]
    fixtures.tar_shard(str(tmp_path / "00000.tar"), broken)
    config = make_tiny_config(**{"data.name": "webdataset", "data.manual_dir": str(tmp_path), "batch_size": 4})
    stream = iter(pipeline.train_dataset(config, tokenizer.from_config(config.tokenizer, str(tmp_path)), 0, 1))
    with pytest.raises(records.TooManySkipsError, match="webdataset train .* is above data.max_skip_fraction 0.05"):
        next(stream)


@pytest.mark.parametrize("damage", ["cut_inside_a_header", "garbled_header"])
def test_a_tar_that_stops_at_an_unreadable_header_is_counted_not_dropped_silently(tmp_path, damage):
    path = str(tmp_path / "00000.tar")
    fixtures.tar_shard(path, [(f"k{k}", {"jpg": fixtures.jpeg_bytes(k), "txt": b"photo %d" % k}) for k in range(4)])
    with tarfile.open(path) as archive:
        header = next(member for member in archive if member.name == "k3.jpg").offset
    with open(path, "r+b") as f:
        if damage == "cut_inside_a_header":
            f.truncate(header + 100)
        else:
            f.seek(header)
            f.write(b"x" * tarfile.BLOCKSIZE)
    skips = records.SkipCounter("webdataset index", max_fraction=0.5)
    samples = webdataset.index_shard(path, 0, skips)
    assert len(samples) == 3 and skips.reasons == {"bad_tar": 1}
    assert f"at byte {header} of {os.path.getsize(path)}" in skips.first_keys[0]


def good_shard(path: str, count: int, first: int = 0) -> None:
    fixtures.tar_shard(
        path, [(f"k{k}", {"jpg": fixtures.jpeg_bytes(k), "txt": b"photo %d" % k}) for k in range(first, first + count)]
    )


def webdataset_source(root: str, max_skip_fraction: float = 0.05):
    config = make_tiny_config(**{"data.name": "webdataset", "data.manual_dir": root})
    config.data.max_skip_fraction = max_skip_fraction
    return webdataset.shard_source(config.data, root, 0, 1)


def test_an_unreadable_shard_counts_the_samples_it_held(tmp_path):
    """One good shard and three gzip files named .tar: three quarters of the data is gone, not 3 records of 35."""
    good_shard(str(tmp_path / "00000.tar"), 32)
    for shard in (1, 2, 3):
        good_shard(str(tmp_path / "tmp.tar"), 32, first=32 * shard)
        with open(tmp_path / "tmp.tar", "rb") as f, gzip.open(tmp_path / f"0000{shard}.tar", "wb") as g:
            g.write(f.read())
        os.remove(tmp_path / "tmp.tar")
    with pytest.raises(records.TooManySkipsError, match=r"skipped 96 of 128 records \(bad_tar: 96\)") as error:
        webdataset_source(str(tmp_path))
    assert "\n" not in str(error.value)


def test_a_truncated_shard_counts_the_samples_it_lost(tmp_path):
    for shard in range(4):
        good_shard(str(tmp_path / f"0000{shard}.tar"), 32, first=32 * shard)
    path = str(tmp_path / "00003.tar")
    with tarfile.open(path) as archive:
        cut = [member for member in archive if member.name == "k100.jpg"][0].offset  # 4 whole samples before it
    with open(path, "r+b") as f:
        f.truncate(cut + 100)
    skips = records.SkipCounter("webdataset index", max_fraction=0.5)
    mine, samples = webdataset.host_samples(webdataset.shard_paths(str(tmp_path)), 0, 1, skips)
    assert len(samples) == 100 and skips.reasons == {"bad_tar": 28} and skips.seen == 128
    with pytest.raises(records.TooManySkipsError, match=r"skipped 28 of 128 records"):
        webdataset_source(str(tmp_path), max_skip_fraction=0.1)


@pytest.mark.parametrize("content", ["zero_byte_tar", "keys_all_mismatch"])
def test_shards_with_nothing_usable_stop_in_one_line(tmp_path, content):
    if content == "zero_byte_tar":
        (tmp_path / "00000.tar").write_bytes(b"")
        expected = r"skipped 1 of 1 records \(bad_tar: 1\)"
    else:  # images and captions under different keys: no sample has both
        samples = [(f"img{k}", {"jpg": fixtures.jpeg_bytes(k)}) for k in range(3)]
        fixtures.tar_shard(str(tmp_path / "00000.tar"), samples + [(f"cap{k}", {"txt": b"photo"}) for k in range(3)])
        expected = r"skipped 6 of 6 records \(no_caption: 3, no_image: 3\)"
    with pytest.raises(records.TooManySkipsError, match=expected) as error:
        webdataset_source(str(tmp_path))
    assert "\n" not in str(error.value)
