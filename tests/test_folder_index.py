"""Indexing any folder of images and searching it: every image found at any depth, bad ones skipped and counted,
shards that resume, the index keyed by path, and search results that name the paths, scores and matched words."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import sparse

from ela_jax.data.records import SkipCounter
from ela_jax.retrieval import folder_index, sparse_vectors
from tests import data_fixtures as fixtures

VOCABULARY = ["[PAD]", "red", "car", "blue", "sky", "dog"]


def synthetic_shards(rng: np.random.Generator) -> list[folder_index.Shard]:
    """Two shards of three and two images (one skipped), random non-negative lexicons and unit global vectors."""
    shards = []
    for keys, skipped in ((["a/1.jpg", "a/2.png", "b.jpg"], []), (["c/d/e.webp", "z.jpg"], [("y.jpg", "corrupt")])):
        lexicon = rng.random((len(keys), len(VOCABULARY))) * (rng.random((len(keys), len(VOCABULARY))) < 0.6)
        lexicon[:, 0] = 0.0
        dense = rng.normal(size=(len(keys), 4))
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        shards.append(folder_index.Shard(keys, dense.astype(np.float32), sparse_vectors.sparsify(lexicon), skipped))
    return shards


def test_an_assembled_index_searches_exactly_by_path_and_names_the_matched_words(tmp_path):
    rng = np.random.default_rng(0)
    shards = synthetic_shards(rng)
    output = str(tmp_path)
    manifest = folder_index.write_index(output, shards, VOCABULARY, {"images": "/photos"}, quantize_scale=100.0)
    assert manifest["images"] == 5 and manifest["skipped"] == 1 and manifest["skipped_reasons"] == {"corrupt": 1}
    with open(os.path.join(output, sparse_vectors.ID_MAP_FILE)) as f:
        id_map = json.load(f)
    keys = ["a/1.jpg", "a/2.png", "b.jpg", "c/d/e.webp", "z.jpg"]
    assert [d["key"] for d in id_map["documents"]] == keys and id_map["skipped"] == [
        {"key": "y.jpg", "reason": "corrupt"}
    ]
    ids, documents = sparse_vectors.read_jsonl(os.path.join(output, sparse_vectors.DOCUMENTS_FILE), VOCABULARY)
    assert ids.tolist() == [0, 1, 2, 3, 4] and documents.dtype == np.int32  # Anserini's integer impacts

    index = folder_index.FolderIndex(output)
    lexicon = sparse.vstack([shard.lexicon for shard in shards]).toarray()
    query = np.array([0.0, 0.9, 0.4, 0.0, 0.0, 0.2], np.float32)
    hits = index.search_lexicon(query, k=3)
    expected = np.lexsort((np.arange(5), -(lexicon @ query)))[:3]
    assert [hit.key for hit in hits] == [keys[i] for i in expected]
    for hit, document in zip(hits, expected):
        assert hit.score == pytest.approx(float(lexicon[document] @ query), rel=1e-6)
        matched = {
            word: query[VOCABULARY.index(word)] * lexicon[document, VOCABULARY.index(word)] for word in VOCABULARY
        }
        assert dict(hit.words) == pytest.approx({w: v for w, v in matched.items() if v > 0})
        assert [weight for _, weight in hit.words] == sorted((weight for _, weight in hit.words), reverse=True)
    dense = np.concatenate([shard.dense for shard in shards])
    global_hits = index.search_global(dense[3], k=2)
    assert global_hits[0].key == "c/d/e.webp" and global_hits[0].score == pytest.approx(1.0, rel=1e-6)


def test_shards_resume_only_for_the_same_images_and_settings(tmp_path):
    shard = synthetic_shards(np.random.default_rng(1))[1]
    path = folder_index.shard_path(str(tmp_path), 3)
    folder_index.save_shard(path, shard)
    assert os.listdir(os.path.dirname(path)) == ["00003.npz"]  # no partial file left beside it
    loaded = folder_index.load_shard(path, ["z.jpg", "y.jpg", "c/d/e.webp"])
    assert loaded.keys == shard.keys and loaded.skipped == shard.skipped
    np.testing.assert_array_equal(loaded.lexicon.toarray(), shard.lexicon.toarray())
    np.testing.assert_array_equal(loaded.dense, shard.dense)
    assert folder_index.load_shard(path, ["z.jpg", "c/d/e.webp"]) is None  # the folder changed: encode again
    settings = {"workdir": "/w", "step": 7, "top_k": None}
    folder_index.check_settings(str(tmp_path), settings)
    folder_index.check_settings(str(tmp_path), dict(settings))
    with pytest.raises(folder_index.FolderIndexError, match=r"holds shards encoded with step=7 \(now 9\); use another"):
        folder_index.check_settings(str(tmp_path), settings | {"step": 9})


def write_photo_folder(root: str) -> dict[str, str]:
    """Images of several formats, sizes and depths, a corrupt and an empty one, and files that are no images; returns
    path -> what indexing does with it."""
    outcomes = {}
    for index, (path, size) in enumerate(
        [("b/wide.jpg", (60, 20)), ("a/tall.JPG", (20, 50)), ("c/d/sq.jpg", (32, 32))]
    ):
        fixtures.write_file(os.path.join(root, path), fixtures.jpeg_bytes(index, size=size))
        outcomes[path] = "kept"
    Image.new("RGBA", (40, 30), (0, 0, 255, 128)).save(os.path.join(root, "logo.png"))
    outcomes["logo.png"] = "kept"
    fixtures.write_file(os.path.join(root, "broken.jpg"), fixtures.jpeg_bytes(5)[:100])
    fixtures.write_file(os.path.join(root, "zero.png"), b"")
    outcomes.update({"broken.jpg": "corrupt", "zero.png": "empty"})
    fixtures.write_file(os.path.join(root, "notes.txt"), b"not an image")
    fixtures.write_file(os.path.join(root, ".cache", "hidden.jpg"), fixtures.jpeg_bytes(6))
    return outcomes


def test_every_image_of_a_folder_is_found_and_bad_ones_are_skipped_with_a_reason(tmp_path):
    root = str(tmp_path)
    outcomes = write_photo_folder(root)
    keys = folder_index.list_images(root)
    assert keys == sorted(outcomes)
    skips = SkipCounter("index", max_fraction=1.0)
    pixels, kept, skipped = folder_index.load_images(root, keys, 32, skips)
    assert pixels.shape == (4, 32, 32, 3) and pixels.dtype == np.uint8
    assert kept == [key for key in keys if outcomes[key] == "kept"]
    assert dict(skipped) == {key: outcome for key, outcome in outcomes.items() if outcome != "kept"}
    assert skips.seen == 6 and skips.skipped == 2


def test_the_index_command_refuses_a_folder_it_cannot_index_in_one_line_before_loading_a_model(tmp_path):
    from ela_jax.retrieval import index

    (tmp_path / "empty").mkdir()
    command = ["--workdir", str(tmp_path / "no_run"), "--output", str(tmp_path / "index")]
    with pytest.raises(SystemExit, match=r"index error: .*/missing' is not a directory$"):
        index.main(command + ["--images", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match=r"index error: .*/empty holds no image files \(.jpg, .jpeg"):
        index.main(command + ["--images", str(tmp_path / "empty")])


@pytest.mark.integration  # encodes images and captions with a tiny model
def test_a_folder_without_captions_is_indexed_resumed_and_searched_by_path(tmp_path):
    import ela_jax
    from ela_jax.experiment import Experiment
    from ela_jax.retrieval import index, search
    from tests.helpers import make_tiny_config, random_params, save_workdir

    experiment = Experiment.build(make_tiny_config(), str(tmp_path / "run"))
    save_workdir(experiment, {5: random_params(experiment)})
    model = ela_jax.load(experiment.workdir)
    photos, output = str(tmp_path / "photos"), str(tmp_path / "index")
    outcomes = write_photo_folder(photos)
    first_run = []
    manifest = index.index_folder(model, photos, output, shard_size=2, quantize_scale=100.0, report=first_run.append)
    assert first_run[2].startswith("shard 3/3: 1 encoded, 1 skipped; 6/6 images done")
    assert manifest["images"] == 4 and manifest["skipped_reasons"] == {"corrupt": 1, "empty": 1}
    assert manifest["settings"]["step"] == 5 and manifest["settings"]["workdir"] == experiment.workdir
    with open(os.path.join(output, sparse_vectors.ID_MAP_FILE)) as f:
        keys = [document["key"] for document in json.load(f)["documents"]]
    assert keys == sorted(key for key, outcome in outcomes.items() if outcome == "kept")
    assert np.load(os.path.join(output, folder_index.DENSE_FILE)).shape == (4, experiment.config.model.embed_dim)
    lexicon_before = sparse.load_npz(os.path.join(output, folder_index.LEXICON_FILE)).toarray()

    os.remove(folder_index.shard_path(output, 1))  # as if stopped while encoding the second shard
    resumed = []
    index.index_folder(model, photos, output, shard_size=2, quantize_scale=100.0, report=resumed.append)
    assert resumed[0].startswith("shard 1/3: already encoded") and resumed[2].startswith("shard 3/3: already encoded")
    assert resumed[1].startswith("shard 2/3: 1 encoded, 1 skipped; 4/6 images done")
    np.testing.assert_allclose(
        sparse.load_npz(os.path.join(output, folder_index.LEXICON_FILE)).toarray(), lexicon_before
    )
    with pytest.raises(folder_index.FolderIndexError, match="holds shards encoded with top_k=None \\(now 5\\)"):
        index.index_folder(model, photos, output, shard_size=2, top_k=5)

    (hits,) = search.search(output, ["a red circle"], top=3, model=model)
    query = model.encode_texts(["a red circle"])["lexicon"][0]
    expected = np.lexsort((np.arange(4), -(lexicon_before @ query)))[:3]
    assert [hit.key for hit in hits] == [keys[i] for i in expected]
    printed = search.format_hits("a red circle", hits, "lexicon")
    assert printed[0] == "'a red circle' (lexicon score, top 3):"
    word, weight = hits[0].words[0]
    assert printed[1].startswith(f"  1. {hits[0].score:8.3f}  {hits[0].key}  [{word} {weight:.2f}")
