"""End to end on the embedded world: training learns retrieval, writes the promised outputs, and resumes exactly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import ela_jax
from ela_jax.training import loop
from ela_jax.training.metrics import read_metrics
from tests.helpers import make_tiny_config

pytestmark = pytest.mark.integration  # trains


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ELA run long enough to learn (about 40 s on 2 cores)."""
    config = make_tiny_config(
        **{
            "total_steps": 300,
            "batch_size": 64,
            "data.num_train": 1024,
            "data.num_test": 100,
            "checkpoint.every_steps": 150,
            "log.every_steps": 50,
            "optim.warmup_steps": 15,
            "optim.lr": 5e-3,
        }
    )
    workdir = str(tmp_path_factory.mktemp("trained"))
    release = loop.host_allocator.release_free_memory
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.host_allocator, "release_free_memory", lambda: RELEASES.append(release()) or True)
        return config, workdir, loop.train(config, workdir)


RELEASES = []  # calls of host_allocator.release_free_memory during the `trained` run


def test_the_loop_hands_back_what_compiling_freed_once(trained):
    # No evaluation during this run (eval.every_steps = 0): the one release follows the first, compiling step.
    assert trained[0].eval.every_steps == 0
    assert len(RELEASES) == 1


def test_held_out_recall_beats_chance_by_a_wide_margin(trained):
    _, _, results = trained
    # 100 images x 5 captions: chance recall@10 is about 10% both ways and chance RSUM about 32; a trained
    # model lands well above the bound below.
    for score in ("global", "lexicon"):
        metrics = results["scores"][score]
        assert metrics["rsum"] > 50.0, score
        assert metrics["text_retrieval_recall@10"] > 15.0 and metrics["image_retrieval_recall@10"] > 15.0, score


def test_training_writes_the_documented_outputs(trained):
    config, workdir, results = trained
    for name in (
        "config.json",
        "metrics.jsonl",
        "sharding.json",
        "eval/results.json",
        "world_vocab.txt",
        "plots/training_curves.png",
    ):
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["150", "300"]
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [50, 100, 150, 200, 250, 300]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        assert json.load(f) == json.loads(json.dumps(results))
    with open(os.path.join(workdir, "sharding.json")) as f:
        sharding = json.load(f)
    assert sharding["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert "image_tower/encoder/layer_0/attention/query/kernel" in sharding["parameters"]


def test_loaded_model_reproduces_the_evaluation_encodings(trained):
    config, workdir, _ = trained
    model = ela_jax.load(workdir)
    from ela_jax.data import pipeline

    dataset = pipeline.retrieval_set(config.data, "test")
    images = model.encode_images(dataset.images[:6], return_tokens=True)
    texts = model.encode_texts(dataset.captions[:6], return_tokens=True)
    assert images["global"].shape == (6, config.model.embed_dim)
    assert images["lexicon"].shape == texts["lexicon"].shape == (6, model.tokenizer.vocab_size)
    assert images["tokens"].shape == (6, 1 + 16, 32) and texts["tokens"].shape == (6, 16, 32)
    assert texts["mask"].shape == (6, 16)
    # The first image's captions (0..4) outscore the other images' for most of them after training.
    similarity = images["global"] @ texts["global"].T
    np.testing.assert_allclose(np.linalg.norm(images["global"], axis=-1), 1.0, rtol=1e-5)
    assert similarity.shape == (6, 6)
    with pytest.raises(ValueError, match="uint8"):
        model.encode_images(dataset.images[:2].astype(np.float32))


def test_the_sparse_search_snippet_in_the_retrieval_docs_runs_as_printed(trained, capsys):
    """The python block of ela_jax/retrieval/README.md that builds an ExactSparseIndex, with W this trained workdir."""
    _, workdir, _ = trained
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "ela_jax", "retrieval", "README.md")) as f:
        blocks = f.read().split("```python\n")[1:]
    snippet = next(block.split("```")[0] for block in blocks if "ExactSparseIndex" in block)
    namespace = {}
    exec(compile(snippet.replace('"W"', repr(workdir)), "retrieval/README.md", "exec"), namespace)
    printed = float(capsys.readouterr().out.split("text->image recall@10:")[1])
    # The same recall from numpy's brute force over the snippet's vectors (stable sort: ties to the lower id).
    scores = namespace["queries"].toarray() @ namespace["documents"].toarray().T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    expected = (top == namespace["dataset"].caption_image[:, None]).any(axis=1).mean()
    assert printed == pytest.approx(expected) and printed > 0.1  # 100 images: chance is 0.1


def test_the_final_evaluation_reaches_tensorboard(trained):
    from tests.helpers import read_events

    _, workdir, results = trained
    scalars = {(v.tag, e.step): v.simple_value for e in read_events(workdir) for v in e.summary.value}
    assert scalars[("eval/global/rsum", 300)] == pytest.approx(results["scores"]["global"]["rsum"], rel=1e-6)
