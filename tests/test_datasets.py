"""Real-data sources on generated fixtures in the upstream formats: COCO / Flickr30K Karpathy builders, the image-text
folder, WebDataset shards; split sizes, caption grouping, the multi-caption evaluation, host split, exact resume."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ela_jax import config as config_lib
from ela_jax import validation
from ela_jax.data import batching, captions_tfds, pipeline, real_pipeline, records, tokenizer, webdataset
from ela_jax.evaluation import evaluators, retrieval
from ela_jax.retrieval import export
from tests import data_fixtures as fixtures
from tests.helpers import make_tiny_config


def real_config(name: str, manual_dir: str, **overrides):
    return make_tiny_config(**{"data.name": name, "data.manual_dir": manual_dir, "batch_size": 4, **overrides})


def split_records(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def texts(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    tags = fixtures.write_coco(root)
    config = real_config("coco", root)
    return config, tags, captions_tfds.captions_builder("coco", config.data, root)


def test_coco_karpathy_splits_merge_restval_into_train_and_keep_every_caption(coco):
    _, tags, builder = coco
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert sizes == {"train": 5, "validation": 2, "test": 3}  # train 3 + restval 2
    test = split_records(builder, "test")
    by_tag = {fixtures.tag_of_caption(texts(r["captions"])[0]): r for r in test}
    assert sorted(by_tag) == tags["test"]
    counts = {tag: len(r["captions"]) for tag, r in by_tag.items()}
    first = tags["test"][0]
    assert counts == {tag: 5 + fixtures.COCO_EXTRA_CAPTIONS * (tag == first) for tag in tags["test"]}
    record = by_tag[first]
    assert texts(record["captions"])[0] == f"caption 0 of photo {first} with spaces"  # whitespace collapsed
    assert record["image_id"] == 100_000 + first  # cocoid
    assert texts([record["key"]])[0] == f"val2014/COCO_val2014_{100_000 + first:012d}.jpg"
    assert record["image"] == fixtures.jpeg_bytes(first)  # the original bytes, not a re-encode


def test_flickr30k_karpathy_splits_with_five_captions(tmp_path):
    tags = fixtures.write_flickr30k(str(tmp_path))
    builder = captions_tfds.captions_builder("flickr30k", real_config("flickr30k", str(tmp_path)).data, str(tmp_path))
    for split, split_tags in tags.items():
        found = split_records(builder, split)
        assert sorted(fixtures.tag_of_caption(texts(r["captions"])[0]) for r in found) == split_tags
        assert all(len(r["captions"]) == 5 for r in found)


def test_folder_groups_jsonl_and_csv_lines_per_image(tmp_path):
    root = str(tmp_path)
    for tag in range(4):
        fixtures.write_file(os.path.join(root, "imgs", f"{tag}.jpg"), fixtures.jpeg_bytes(tag))
    fixtures.write_jsonl(
        os.path.join(root, "captions.jsonl"),
        [
            {"image": "imgs/0.jpg", "caption": "photo 0 first"},
            {"image": "imgs/1.jpg", "captions": ["photo 1 a", "photo 1 b", "photo 1 c"]},
            {"image": "imgs/0.jpg", "caption": "photo 0 second"},  # same image again: grouped
            {"image": "./imgs/0.jpg", "captions": ["photo 0 third"]},  # same file, other spelling
        ],
    )
    with open(os.path.join(root, "test.csv"), "w") as f:
        f.write('image,caption\nimgs/2.jpg,photo 2 x\nimgs/3.jpg,"photo 3, with a comma"\nimgs/2.jpg,photo 2 y\n')
    builder = captions_tfds.captions_builder("folder", real_config("folder", root).data, root)
    train = {texts([r["key"]])[0]: texts(r["captions"]) for r in split_records(builder, "train")}
    assert train == {
        "imgs/0.jpg": ["photo 0 first", "photo 0 second", "photo 0 third"],
        "imgs/1.jpg": ["photo 1 a", "photo 1 b", "photo 1 c"],
    }
    test = {texts([r["key"]])[0]: texts(r["captions"]) for r in split_records(builder, "test")}
    assert test == {"imgs/2.jpg": ["photo 2 x", "photo 2 y"], "imgs/3.jpg": ["photo 3, with a comma"]}


def test_a_folder_trains_without_a_test_split_and_is_then_not_evaluated(tmp_path):
    """The test split is optional: the config validates, training's evaluation reports no scores, and reading the
    missing split says what to add."""
    fixtures.write_file(str(tmp_path / "a.jpg"), fixtures.jpeg_bytes(1))
    fixtures.write_jsonl(str(tmp_path / "captions.jsonl"), [{"image": "a.jpg", "caption": "photo 1"}])
    config = real_config("folder", str(tmp_path))
    validation.validate(config, num_devices=1)
    assert not pipeline.has_test_split(config.data)
    evaluation = evaluators.RetrievalEvaluator(config, tokenizer=None)
    assert evaluation(encoder=None, step=7) == {"step": 7, "split": "test", "scores": {}}
    with pytest.raises(ValueError, match="splits \\['train'\\], not 'test'; add a test.jsonl"):
        pipeline.retrieval_set(config.data, "test")


def test_a_folder_keeps_every_images_key_through_evaluation_and_the_export_id_map(tmp_path):
    """The prepared split is in another order than test.jsonl, whose lines are in neither file-name order: each
    image of the evaluation set still carries its path, and the export's id map names it for its captions."""
    root = str(tmp_path)
    order = [5, 3, 0, 4, 1, 2]
    paths = {tag: f"{'b' if tag % 2 else 'a'}/img_{9 - tag:03d}.jpg" for tag in order}
    for tag in order:
        fixtures.write_file(os.path.join(root, paths[tag]), fixtures.jpeg_bytes(tag))
    fixtures.write_jsonl(
        os.path.join(root, "test.jsonl"), [{"image": paths[t], "captions": fixtures.captions_for(t, 2)} for t in order]
    )
    fixtures.write_jsonl(os.path.join(root, "captions.jsonl"), [{"image": paths[0], "caption": "photo 0"}])
    dataset = pipeline.retrieval_set(real_config("folder", root).data, "test")
    assert sorted(dataset.keys) == sorted(paths.values()) and dataset.keys != [paths[t] for t in order]
    tag_of_path = {path: tag for tag, path in paths.items()}
    assert [fixtures.tag_of_pixels(image) for image in dataset.images] == [tag_of_path[k] for k in dataset.keys]
    id_map = export.retrieval_id_map("test", dataset.keys, dataset.captions, dataset.caption_image)
    assert [document["key"] for document in id_map["documents"]] == dataset.keys
    assert len(id_map["queries"]) == 12
    for query in id_map["queries"]:
        assert tag_of_path[query["image_key"]] == fixtures.tag_of_caption(query["caption"])


@pytest.mark.parametrize(
    "name, record, key",
    [
        ("coco", {"key": b"val2014/COCO_val2014_000000000042.jpg", "image_id": 42}, "42"),
        ("flickr30k", {"key": b"1000092795.jpg", "image_id": 3}, "1000092795"),  # the Flickr photo id, not imgid
        ("folder", {"key": b"holiday/beach.png", "image_id": 0}, "holiday/beach.png"),
    ],
)
def test_each_source_names_its_images_as_its_users_do(name, record, key):
    assert real_pipeline.image_key(name, record) == key


REAL_CAPTIONS = ["a brown dog runs along the beach at sunset", "two people ride bicycles through a busy street"]


def test_real_captions_under_the_world_vocabulary_and_a_batch_beyond_the_data_each_warn(tmp_path, caplog):
    for index, caption in enumerate(REAL_CAPTIONS):
        fixtures.write_file(str(tmp_path / f"{index}.jpg"), fixtures.jpeg_bytes(index))
    fixtures.write_jsonl(
        str(tmp_path / "captions.jsonl"), [{"image": f"{i}.jpg", "caption": c} for i, c in enumerate(REAL_CAPTIONS)]
    )
    config = real_config("folder", str(tmp_path), **{"tokenizer.vocab": "world", "batch_size": 4})
    world = tokenizer.from_config(config.tokenizer, str(tmp_path))
    pipeline.train_dataset(config, world, 0, 1)
    assert "of the caption words in a sample of folder are [UNK] under tokenizer.vocab='world'" in caplog.text
    assert "batch_size 4 exceeds the 2 training images of folder" in caplog.text
    bert = tokenizer.from_config(real_config("folder", "", **{"tokenizer.vocab": "bert-base-uncased"}).tokenizer, "")
    assert batching.unknown_share(world, REAL_CAPTIONS) > 0.5 and batching.unknown_share(bert, REAL_CAPTIONS) == 0.0


def test_evaluation_sees_every_caption_of_every_image(coco, tmp_path):
    """A WebDataset training run evaluates on COCO's Karpathy test split: all 17 captions, each paired with its own
    image, so an oracle score reaches 100 recall both ways under the multi-caption protocol."""
    coco_config, tags, _ = coco
    fixtures.write_shards(str(tmp_path), 1, 2)
    config = real_config(
        "webdataset", str(tmp_path), **{"data.eval_name": "coco", "data.eval_manual_dir": coco_config.data.manual_dir}
    )
    dataset = pipeline.retrieval_set(config.data, "test")
    assert dataset.images.shape == (3, 32, 32, 3) and dataset.images.dtype == np.uint8
    assert len(dataset.captions) == 3 * 5 + fixtures.COCO_EXTRA_CAPTIONS == 17
    image_tags = np.asarray([fixtures.tag_of_pixels(image) for image in dataset.images])
    caption_tags = np.asarray([fixtures.tag_of_caption(c) for c in dataset.captions])
    np.testing.assert_array_equal(image_tags[dataset.caption_image], caption_tags)
    assert sorted(image_tags) == tags["test"]
    assert dataset.keys == [str(100_000 + tag) for tag in image_tags]  # COCO's image ids

    def oracle(rows, columns):
        return (image_tags[rows][:, None] == caption_tags[columns][None, :]).astype(np.float64)

    image_ranks, caption_ranks = retrieval.retrieval_ranks(oracle, len(dataset.images), dataset.caption_image)
    metrics = retrieval.recall_metrics(image_ranks, caption_ranks)
    assert metrics["text_retrieval_recall@1"] == metrics["image_retrieval_recall@1"] == 100.0


@pytest.mark.parametrize("num_shards, process_count", [(5, 2), (1, 3)])
def test_webdataset_hosts_get_disjoint_nonempty_parts_covering_every_sample(tmp_path, num_shards, process_count):
    tags = fixtures.write_shards(str(tmp_path), num_shards, 3)
    paths = webdataset.shard_paths(str(tmp_path))
    seen = []
    for host in range(process_count):
        skips = records.SkipCounter("test", 0.0)
        mine, samples = webdataset.host_samples(paths, host, process_count, skips)
        source = webdataset.ShardSource(mine, samples)
        assert len(source) > 0 and skips.skipped == 0
        if num_shards >= process_count:
            assert mine == paths[host::process_count]  # whole shards
        seen += [fixtures.tag_of_caption(source[i]["captions"][0]) for i in range(len(source))]
    assert sorted(seen) == tags


def test_webdataset_source_reads_json_captions_and_names_keys(tmp_path):
    fixtures.write_shards(str(tmp_path), 1, 2, caption_format="json")
    source = webdataset.shard_source(real_config("webdataset", str(tmp_path)).data, str(tmp_path), 0, 1)
    record = source[1]
    assert record["captions"] == ["caption 0 of photo 1 with spaces"]
    assert record["key"] == "00000.tar:000000001"
    assert record["image"] == fixtures.jpeg_bytes(1)


def test_webdataset_with_fewer_samples_than_hosts_fails_clearly(tmp_path):
    fixtures.write_shards(str(tmp_path), 1, 2)
    with pytest.raises(ValueError, match="host 2 of 3 has no samples"):
        webdataset.host_samples(webdataset.shard_paths(str(tmp_path)), 2, 3, records.SkipCounter("t", 0.0))


def take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def assert_same_batches(expected: list[dict], actual: list[dict]) -> None:
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        for key in ("images", "token_ids", "mask"):
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("name", ["webdataset", "coco"])
def test_real_stream_has_the_batch_layout_and_resumes_exactly_mid_epoch(name, coco, tmp_path):
    if name == "coco":
        config = coco[0]
    else:
        fixtures.write_shards(str(tmp_path), 3, 4)  # 12 samples: 3 batches of 4 per epoch
        config = real_config(name, str(tmp_path))
    tok = tokenizer.from_config(config.tokenizer, str(tmp_path))
    stream = iter(pipeline.train_dataset(config, tok, 0, 1))
    first = take(stream, 2)
    batch = first[0]
    assert batch["images"].shape == (4, 32, 32, 3) and batch["images"].dtype == np.uint8
    assert batch["token_ids"].shape == (4, 16) and batch["token_ids"].dtype == np.int32
    assert batch["mask"].dtype == bool
    state = stream.get_state()  # mid-epoch
    after = take(stream, 4)  # crosses the epoch boundary
    again = iter(pipeline.train_dataset(config, tok, 0, 1))
    assert_same_batches(first, take(again, 2))
    resumed = iter(pipeline.train_dataset(config, tok, 0, 1))
    resumed.set_state(state)
    assert_same_batches(after, take(resumed, 4))


def test_mixture_draws_sources_by_weight_and_resumes_exactly(tmp_path):
    fixtures.write_shards(str(tmp_path / "a"), 2, 2)  # tags 0-3
    fixtures.write_shards(str(tmp_path / "b"), 1, 4, first_tag=8)  # tags 8-11
    entries = (f"webdataset:{tmp_path / 'a'}:3", f"webdataset:{tmp_path / 'b'}:1")
    config = real_config("mixture", "", **{"data.train": entries, "batch_size": 8})
    tok = tokenizer.from_config(config.tokenizer, str(tmp_path))
    stream = iter(pipeline.train_dataset(config, tok, 0, 1))
    first = take(stream, 2)
    state = stream.get_state()
    after = take(stream, 3)
    from_b = [fixtures.tag_of_pixels(image) >= 8 for batch in first + after for image in batch["images"]]
    assert sum(from_b) == len(from_b) // 4  # weights 3 : 1, interleaved exactly
    resumed = iter(pipeline.train_dataset(config, tok, 0, 1))
    resumed.set_state(state)
    assert_same_batches(after, take(resumed, 3))


@pytest.mark.slow
def test_worker_processes_resume_exactly(tmp_path):
    """data.num_workers > 0 (grain worker processes; their start-up takes most of a minute on 2 cores)."""
    fixtures.write_shards(str(tmp_path), 3, 4)
    config = real_config("webdataset", str(tmp_path), **{"data.num_workers": 2})
    tok = tokenizer.from_config(config.tokenizer, str(tmp_path))
    stream = iter(pipeline.train_dataset(config, tok, 0, 1))
    take(stream, 2)
    state = stream.get_state()
    after = take(stream, 4)
    resumed = iter(pipeline.train_dataset(config, tok, 0, 1))
    resumed.set_state(state)
    assert_same_batches(after, take(resumed, 4))


def test_crops_keep_image_content_and_differ_across_epochs(tmp_path):
    fixtures.write_shards(str(tmp_path), 1, 4)
    config = real_config("webdataset", str(tmp_path))
    tok = tokenizer.from_config(config.tokenizer, str(tmp_path))
    stream = iter(pipeline.train_dataset(config, tok, 0, 1))
    epochs = [next(stream) for _ in range(2)]
    for batch in epochs:  # each crop shows its own image's colour; flip is off
        assert sorted(fixtures.tag_of_pixels(image) for image in batch["images"]) == [0, 1, 2, 3]
    assert not np.array_equal(np.sort(epochs[0]["images"], axis=0), np.sort(epochs[1]["images"], axis=0))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.name": "laion"}, "data.name='laion' is not one of"),
        ({"data.name": "coco"}, "data source 'coco' needs data.manual_dir: the folder holding dataset_coco.json"),
        ({"data.name": "folder", "data.manual_dir": "/no/such/dir"}, "'/no/such/dir' is not a directory"),
        ({"data.name": "coco", "data.manual_dir": "{empty}"}, "lacks dataset_coco.json, train2014, val2014"),
        ({"data.name": "flickr30k", "data.manual_dir": "{empty}"}, "lacks dataset_flickr30k.json, flickr30k-images"),
        ({"data.name": "folder", "data.manual_dir": "{empty}"}, "lacks captions.jsonl or captions.csv or train.jsonl"),
        ({"data.name": "webdataset", "data.manual_dir": "{empty}"}, "lacks \\*.tar shards"),
        ({"data.name": "webdataset", "data.manual_dir": "{shards}"}, "has no test split to evaluate on"),
        ({"data.eval_name": "webdataset"}, "data.eval_name='webdataset' is not one of"),
        (
            {"data.name": "webdataset", "data.manual_dir": "{shards}", "data.eval_name": "world"},
            "data.eval_name='world' evaluates on the embedded world, which a data.name='webdataset' run does not read",
        ),
        ({"data.eval_name": "folder"}, "data source 'folder' needs data.eval_manual_dir"),
        ({"data.max_skip_fraction": 1.0}, "data.max_skip_fraction must lie in \\[0, 1\\)"),
        ({"data.crop_scale": (0.0, 1.0)}, "data.crop_scale must satisfy 0 < low <= high <= 1"),
        ({"data.num_workers": -1}, "data.num_workers must be >= 0"),
        ({"data.dir": "gs://bucket/tfds"}, "'gs://bucket/tfds' is a URL, but TFDS prepares and reads ArrayRecord"),
        ({"data.name": "mixture"}, "data.name='mixture' needs data.train entries 'name:manual_dir:weight'"),
        ({"data.name": "mixture", "data.train": ("laion:/d:1",)}, "is not 'name:manual_dir:weight' with name in"),
        ({"data.name": "mixture", "data.train": ("folder:/d:x",)}, "has weight 'x', not a number"),
        ({"data.name": "mixture", "data.train": ("webdataset:{empty}:1",)}, "entry 'webdataset:.*' lacks \\*.tar"),
        ({"data.name": "mixture", "data.train": ("webdataset:{shards}:1",)}, "data.name=mixture has no test split"),
        ({"data.train": ("webdataset:{shards}:1",)}, "only data.name='mixture' reads; got data.name='world'"),
    ],
)
def test_data_config_errors_are_one_line(tmp_path, overrides, message):
    (tmp_path / "empty").mkdir()
    fixtures.tar_shard(str(tmp_path / "shards" / "00000.tar"), [])
    fixtures.write_jsonl(str(tmp_path / "train_only" / "captions.jsonl"), [])
    paths = {name: str(tmp_path / name.strip("{}")) for name in ("{empty}", "{shards}", "{train_only}")}

    def resolve(value):
        if isinstance(value, tuple):
            return tuple(resolve(v) for v in value)
        for name, path in paths.items():
            value = value.replace(name, path) if isinstance(value, str) else value
        return value

    config = make_tiny_config(**{key: resolve(value) for key, value in overrides.items()})
    with pytest.raises(config_lib.ConfigError, match=message) as error:
        validation.validate(config, num_devices=1)
    assert "\n" not in str(error.value)
