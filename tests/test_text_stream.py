"""The cue world's unpaired text stream: delivered in the batch, refused where it cannot be served, and trained by its
own MLM term (objective.stream_mlm_weight) on the same text head as the captions' MLM."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from ela_jax import objectives, validation
from ela_jax.data import cues, pipeline
from ela_jax.errors import ConfigError
from ela_jax.experiment import Experiment
from ela_jax.models.ela import ELAModel
from ela_jax.training.step import ObjectiveBuilder
from tests.helpers import make_tiny_config

STREAM = 8


def stream_config(**overrides):
    return make_tiny_config(
        **{
            "data.world": "cues",
            "data.num_train": 16,
            "data.num_test": 8,
            "batch_size": 8,
            "data.text_stream.batch_size": STREAM,
            "objective.stream_mlm_weight": 1.0,
            **overrides,
        }
    )


def test_the_training_batch_carries_the_stream_sentences(tmp_path):
    config = stream_config()
    words = Experiment.build(config, str(tmp_path)).tokenizer
    batch = next(iter(pipeline.train_dataset(config, words, 0, 1)))
    assert batch["stream_tokens"].shape == batch["stream_mask"].shape == (STREAM, config.tokenizer.max_length)
    for row, mask in zip(batch["stream_tokens"], batch["stream_mask"]):
        sentence = [words.id_to_token(t) for t in row[mask][1:-1]]
        assert set(sentence) & set(cues.CUE_WORDS) and set(sentence) & set(cues.MUTE_WORDS)
    without = make_tiny_config(**{"data.world": "cues", "data.num_train": 16, "data.num_test": 8, "batch_size": 8})
    assert "stream_tokens" not in next(iter(pipeline.train_dataset(without, words, 0, 1)))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.world": "scenes"}, "data.world='cues'"),
        ({"data.text_stream.batch_size": 0}, "data.text_stream.batch_size is 0"),
        ({"data.text_stream.batch_size": 6, "train.microbatches": 4}, "multiple of 4"),
        ({"objective.stream_mlm_weight": -1.0}, ">= 0"),
    ],
)
def test_a_stream_that_cannot_be_served_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validation.validate(stream_config(**overrides), num_devices=1)


@pytest.mark.integration  # compiles the text tower's gradient
def test_stream_mlm_trains_the_text_head_on_the_stream_sentences(tmp_path):
    experiment = Experiment.build(stream_config(), str(tmp_path))
    params = experiment.state_factory().create(0).params
    # Every other term off (validation wants one on, so the builder gets this config directly).
    config = stream_config(**{f"objective.{k}_weight": 0.0 for k in ("global", "ela", "flops", "mlm")})
    builder = ObjectiveBuilder(experiment.model, config, experiment.vocabulary())
    stream_tokens, stream_mask = experiment.tokenizer.encode(cues.stream_sentences(np.random.default_rng(0), STREAM))
    batch = {"token_ids": stream_tokens[::-1], "mask": stream_mask[::-1]}  # captions: whatever, same shapes
    batch.update(stream_tokens=stream_tokens, stream_mask=stream_mask)
    mlm = builder.mlm_inputs(batch, jax.random.key(3))

    # The term: MLM's loss on the stream, through the captions' MLM head.
    sums = builder.stream_mlm_sums(params, batch, mlm)
    logits = experiment.model.apply(
        {"params": params}, mlm["stream_corrupted"], stream_mask, method=ELAModel.mlm_logits
    )
    reference = objectives.mlm_loss(logits, stream_tokens, mlm["stream_selected"])
    selected = np.sum(mlm["stream_selected"])
    np.testing.assert_allclose(np.sum(sums) / selected, reference, rtol=1e-5)
    loss, metrics = builder.loss_from_reps(params, {"stream_mlm_sums": sums}, batch, mlm, jax.numpy.asarray(0))
    weight = config.objective.stream_mlm_weight
    np.testing.assert_allclose(metrics["loss_stream_mlm"], reference, rtol=1e-5)
    np.testing.assert_allclose(loss, weight * reference, rtol=1e-5)

    # Its gradient reaches the text tower and the head, and plain steps on it lower the stream's MLM loss.
    def stream_loss(p):
        return jax.numpy.sum(builder.stream_mlm_sums(p, batch, mlm)) / selected

    loss_and_grad = jax.jit(jax.value_and_grad(stream_loss))
    first, grads = loss_and_grad(params)
    assert all(float(optax.global_norm(grads[group])) > 0 for group in ("text_tower", "text_lexicon"))
    for _ in range(5):
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
        later, grads = loss_and_grad(params)
    assert float(later) < 0.8 * float(first), (float(first), float(later))
