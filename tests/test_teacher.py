"""The pretrained expansion teacher (objective.ela.target_source = "pretrained"): re-spelling the model's vocabulary
in the checkpoint's wordpieces, the teacher against the PyTorch checkpoint, and a short training run that keeps it
frozen and restores it on resume."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from configs import ela_minilm
from ela_jax import config as config_lib
from ela_jax import validation
from ela_jax.data import tokenizer as tokenizer_lib
from ela_jax.data import world
from ela_jax.experiment import Experiment
from ela_jax.training import teacher as teacher_lib
from ela_jax.training import loop
from tests.helpers import make_tiny_config

MINILM = ela_minilm.minilm_dir()
WORDS = list(tokenizer_lib.SPECIAL_TOKENS) + list(world.vocabulary_words())


def teacher_config(**overrides):
    return make_tiny_config(
        **{
            "objective.ela.beta": 0.5,
            "objective.ela.target_source": "pretrained",
            "objective.ela.teacher_dir": MINILM,
            "objective.mlm_weight": 0.0,
            "model.vocab_size": len(WORDS),
            **overrides,
        }
    )


def test_words_are_spelt_in_wordpieces_and_embedded_as_their_mean():
    pieces = teacher_lib.word_pieces(MINILM, ["[CLS]", "red", "teal"])
    vocab = [line.rstrip("\n") for line in open(os.path.join(MINILM, "vocab.txt"))]
    assert [vocab[i] for i in pieces[0]] == ["[CLS]"] and [vocab[i] for i in pieces[1]] == ["red"]
    assert len(pieces[2]) > 1 and "".join(vocab[i].lstrip("#") for i in pieces[2]) == "teal"
    embeddings = np.random.default_rng(0).standard_normal((len(vocab), 4)).astype(np.float32)
    table = teacher_lib.vocabulary_embeddings(embeddings, pieces)
    np.testing.assert_allclose(table[2], embeddings[pieces[2]].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(table[1], embeddings[pieces[1][0]])


def test_pretrained_source_needs_a_checkpoint_directory():
    with pytest.raises(config_lib.ConfigError, match="teacher_dir"):
        validation.validate(teacher_config(**{"objective.ela.teacher_dir": ""}), num_devices=1)


@pytest.mark.integration  # loads the real MiniLM checkpoint
def test_teacher_equals_the_pytorch_checkpoint_on_single_piece_words():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = teacher_config()
    teacher = teacher_lib.PretrainedTeacher.from_config(config)
    params = teacher.load_params(WORDS, teacher.init_params(jax.random.key(0), config.tokenizer.max_length))
    caption = ["[CLS]", "a", "huge", "lime", "wedge", "with", "a", "tiny", "navy", "hoop", "[SEP]"]
    ids = np.array([[WORDS.index(w) for w in caption]], np.int32)
    mask = np.ones_like(ids, bool)
    token_mask = mask.copy()
    token_mask[:, 0] = False
    lexicon = np.asarray(teacher.expansion_lexicon(params, ids, mask, token_mask))

    reference = transformers.AutoModel.from_pretrained(MINILM).eval()
    vocab = [line.rstrip("\n") for line in open(os.path.join(MINILM, "vocab.txt"))]
    bert_ids = torch.tensor([[vocab.index(w) for w in caption]])
    with torch.no_grad():
        hidden = reference(input_ids=bert_ids).last_hidden_state[0]
        table = torch.tensor(
            teacher_lib.vocabulary_embeddings(
                reference.embeddings.word_embeddings.weight.numpy(), teacher_lib.word_pieces(MINILM, WORDS)
            )
        )
        expected = torch.log1p(torch.relu((hidden[1:] @ table.T).max(dim=0).values)).numpy()
    np.testing.assert_allclose(lexicon[0], expected, atol=2e-4, rtol=2e-4)
    top = [WORDS[i] for i in np.argsort(-lexicon[0])[:12]]
    assert {"big", "large"} & set(top)  # the expansion reaches synonyms the caption does not use


@pytest.mark.integration  # trains
def test_training_keeps_the_teacher_frozen_and_resume_restores_it(tmp_path):
    config = teacher_config(total_steps=2, **{"checkpoint.every_steps": 1, "log.every_steps": 1})
    workdir = str(tmp_path / "run")
    results = loop.train(config, workdir)
    assert np.isfinite(results["scores"]["global"]["rsum"])
    experiment = Experiment.build(config, workdir)
    config = experiment.config
    restored = experiment.restore_state()  # the newest checkpoint, as a restarted job resumes
    assert int(restored.step) == 2
    teacher = teacher_lib.PretrainedTeacher.from_config(config)
    loaded = teacher.load_params(WORDS, teacher.init_params(jax.random.key(0), config.tokenizer.max_length))
    # Two updates later the teacher is still the checkpoint, bit for bit.
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), restored.teacher, loaded))
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if "loss_ela" in line]
    assert metrics and all(np.isfinite(m["loss_ela"]) for m in metrics)
