"""Expansion and the heads around it inside a real train step: which side each loss trains, FLOPS, the EMA and
frozen teachers, and the temperature clamp. Each distinct step compiles once for the module (compiling dominates)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from ela_jax import objectives, parallel
from ela_jax.experiment import Experiment
from ela_jax.models.ela import max_log_scale
from ela_jax.training.state import teacher_params
from ela_jax.training.step import ObjectiveBuilder, Vocabulary, make_train_step, text_token_mask
from tests.helpers import make_tiny_config, set_keys

pytestmark = pytest.mark.integration  # compiles and runs real train steps

BATCH = 8
OPTIMIZERS = {
    # Plain SGD: a parameter that gets a zero gradient stays bit-identical after a step (AdamW's decay would move it).
    "sgd": optax.sgd(0.5),
    # Adds 1 to every parameter whatever the gradient: a known update to check what comes after it.
    "add_one": optax.stateless(lambda updates, params: jax.tree.map(jax.numpy.ones_like, updates)),
}
# Online expansion with MLM off and no global term: the targets are stop-gradient, so only FLOPS could reach the text
# side (validation refuses this config, for that reason; the step is built without it).
ONLINE_ELA_AND_FLOPS = (
    ("objective.ela.target_source", "online"),
    ("objective.mlm_weight", 0.0),
    ("objective.global_weight", 0.0),
    ("objective.flops_weight", 1.0),
)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny ELA model expanding from an EMA teacher (the state then carries a text-side teacher, as `frozen`
    would), with both log logit scales half a unit under their cap."""
    config = make_tiny_config(
        batch_size=BATCH,
        **{"objective.ela.beta": 0.5, "objective.ela.target_source": "ema", "objective.ela.ema_decay": 0.9},
    )
    experiment = Experiment.build(config, str(tmp_path_factory.mktemp("expansion")))
    state = experiment.state_factory().create(0)
    near_cap = {
        name: jax.numpy.asarray(max_log_scale(config.model) - 0.5) for name in ("global_log_scale", "fine_log_scale")
    }
    return experiment, state.replace(params={**state.params, **near_cap})


def batch(experiment: Experiment, seed: int = 0, token_ids=None) -> dict:
    rng = np.random.default_rng(seed)
    host = {
        "images": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
        "token_ids": rng.integers(5, experiment.tokenizer.vocab_size, (BATCH, 16)).astype(np.int32),
        "mask": np.arange(16)[None, :] < rng.integers(4, 17, (BATCH, 1)),
    }
    if token_ids is not None:
        host["token_ids"] = np.full_like(host["token_ids"], token_ids)
    return parallel.host_batch_to_global(host, experiment.mesh)


_STEPS = {}  # (overrides, optimizer) -> the jitted step, shared by the tests of this module


def compiled_step(experiment: Experiment, overrides: tuple, optimizer: str):
    if (overrides, optimizer) not in _STEPS:
        config = set_keys(experiment.config.copy_and_resolve_references(), dict(overrides))
        vocabulary = Vocabulary.from_tokenizer(experiment.tokenizer, True)
        train_step = make_train_step(experiment.model, OPTIMIZERS[optimizer], lambda _: 0.5, config, vocabulary)
        _STEPS[overrides, optimizer] = jax.jit(train_step)
    return _STEPS[overrides, optimizer]


def one_step(experiment, overrides: tuple = (), optimizer: str = "add_one", data=None):
    """(state before, state after, metrics) of one jitted train step under the experiment's config + overrides."""
    experiment, state = experiment
    state = state.replace(opt_state=OPTIMIZERS[optimizer].init(state.params))
    after, metrics = compiled_step(experiment, overrides, optimizer)(state, data or batch(experiment))
    return jax.device_get(state), jax.device_get(after), jax.device_get(metrics)


def changed(before: dict, after: dict) -> dict[str, bool]:
    """{path: whether the leaf moved} over a params subtree."""
    pairs = zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after))
    return {jax.tree_util.keystr(path): not np.array_equal(old, new) for (path, old), new in pairs}


def test_neither_the_ela_loss_nor_flops_trains_an_online_text_side_that_mlm_does_not(experiment):
    before, after, metrics = one_step(experiment, ONLINE_ELA_AND_FLOPS, optimizer="sgd")
    assert float(metrics["loss_flops"]) > 0.0 and float(metrics["loss_ela"]) > 0.0
    for group in ("text_tower", "text_lexicon"):
        moved = changed(before.params[group], after.params[group])
        assert not any(moved.values()), f"{group} moved: {moved}"
    assert any(changed(before.params["image_lexicon"], after.params["image_lexicon"]).values())


def test_the_log_logit_scales_are_clamped_after_the_update(experiment):
    """Both start half a unit under the cap and the update adds 1: they end at log(1 / min_temperature)."""
    before, after, _ = one_step(experiment)
    cap = max_log_scale(experiment[0].config.model)
    for name in ("global_log_scale", "fine_log_scale"):
        np.testing.assert_allclose(after.params[name], cap, rtol=1e-7, err_msg=name)
    np.testing.assert_allclose(after.params["text_global"]["kernel"], before.params["text_global"]["kernel"] + 1.0)


def test_the_ema_teacher_averages_the_updated_text_side(experiment):
    """teacher <- decay * teacher + (1 - decay) * the text side *after* this step's update."""
    before, after, _ = one_step(experiment)
    decay = experiment[0].config.objective.ela.ema_decay
    expected = jax.tree.map(
        lambda t, p: decay * t + (1.0 - decay) * (p + 1.0), before.teacher, teacher_params(before.params)
    )
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(after.teacher)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_a_non_finite_step_leaves_the_ema_teacher_as_it_was(experiment):
    # An id past the vocabulary gathers NaN embeddings and poisons the whole gradient.
    poisoned = batch(experiment[0], token_ids=experiment[0].tokenizer.vocab_size + 7)
    before, after, metrics = one_step(experiment, data=poisoned)
    assert float(metrics["skipped"]) == 1.0
    assert not any(changed(before.teacher, after.teacher).values())


def test_the_frozen_teacher_stays_the_text_side_at_step_zero(experiment):
    before, after, _ = one_step(experiment, (("objective.ela.target_source", "frozen"),))
    assert not any(changed(teacher_params(before.params), before.teacher).values()), "a copy of the initial text side"
    assert not any(changed(before.teacher, after.teacher).values())
    assert any(changed(teacher_params(before.params), teacher_params(after.params)).values())


@pytest.mark.parametrize("form", ["softmax", "sparse"])
def test_the_ela_loss_builds_its_targets_in_the_configured_form(experiment, form):
    experiment, _ = experiment
    config = set_keys(experiment.config.copy_and_resolve_references(), {"objective.ela.target_form": form})
    vocabulary = Vocabulary.from_tokenizer(experiment.tokenizer, True)
    builder = ObjectiveBuilder(experiment.model, config, vocabulary)
    data = jax.device_get(batch(experiment, seed=1))
    rng = np.random.default_rng(2)
    vocab = experiment.tokenizer.vocab_size
    reps = {
        "expansion": np.maximum(rng.normal(size=(BATCH, vocab)), 0.0).astype(np.float32),
        "image_pooled": rng.normal(size=(BATCH, vocab)).astype(np.float32),
    }
    step = jax.numpy.asarray(10**6)  # past any beta ramp
    loss = builder.ela_loss(reps, data, step)
    content = vocabulary.content
    bags = objectives.caption_bag_of_words(data["token_ids"], text_token_mask(data), content)
    ela = config.objective.ela
    targets = objectives.expanded_targets(bags, reps["expansion"], content, ela.beta, ela.tau_q, ela.top_k, form)
    np.testing.assert_allclose(loss, objectives.ela_soft_ce(reps["image_pooled"], targets, ela.tau_p), rtol=1e-6)


def test_the_experiment_model_masks_the_tokenizer_special_tokens(experiment):
    experiment, state = experiment
    special = list(experiment.tokenizer.special_ids)
    assert sorted(special) == sorted(
        experiment.tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    )
    assert experiment.model.special_ids == experiment.tokenizer.special_ids
    images = jax.device_get(batch(experiment))["images"]
    encoded = jax.jit(lambda p, x: experiment.model.apply({"params": p}, x, method="encode_image"))(
        state.params, images
    )
    np.testing.assert_array_equal(np.asarray(encoded["lexicon"])[:, special], 0.0)


def test_the_lexicon_retrieval_term_trains_the_text_lexicon_the_ela_targets_cannot(experiment):
    """Same config as the test above that leaves the text side still, plus LexLIP's lexicon term."""
    with_lexicon_term = ONLINE_ELA_AND_FLOPS + (("objective.lexicon_weight", 1.0),)
    before, after, metrics = one_step(experiment, with_lexicon_term, optimizer="sgd")
    assert float(metrics["loss_lexicon"]) > 0.0
    assert any(changed(before.params["text_lexicon"], after.params["text_lexicon"]).values())


def test_the_shuffle_control_expands_each_caption_from_the_previous_captions_lexicon(experiment):
    experiment, state = experiment
    config = set_keys(
        experiment.config.copy_and_resolve_references(),
        {"objective.ela.target_source": "online", "objective.ela.shuffle_source": True},
    )
    builder = ObjectiveBuilder(experiment.model, config, Vocabulary.from_tokenizer(experiment.tokenizer, True))
    text_lexicon = np.arange(BATCH * 5, dtype=np.float32).reshape(BATCH, 5)
    shuffled = builder.expansion_lexicon(state.params, state.teacher, {"lexicon": text_lexicon}, {})
    np.testing.assert_array_equal(shuffled, np.roll(text_lexicon, 1, axis=0))
