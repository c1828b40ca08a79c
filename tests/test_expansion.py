"""Expansion and the heads around it inside a real train step: which side each loss trains, FLOPS, the EMA and
frozen teachers, and the temperature clamp."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from ela_jax import objectives, parallel
from ela_jax.experiment import Experiment
from ela_jax.models.ela import max_log_scale
from ela_jax.training.step import ObjectiveBuilder, Vocabulary, make_train_step, text_token_mask
from tests.helpers import make_tiny_config, set_keys

pytestmark = pytest.mark.integration  # every test here compiles and runs real train steps

BATCH = 8
# Plain SGD: a parameter that gets a zero gradient stays bit-identical after a step (AdamW's decay would move it).
SGD = optax.sgd(0.5)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny ELA model with an EMA teacher (the state then carries a text-side teacher, as `frozen` would)."""
    config = make_tiny_config(
        batch_size=BATCH,
        **{"objective.ela.beta": 0.5, "objective.ela.target_source": "ema", "objective.ela.ema_decay": 0.9},
    )
    return Experiment.build(config, str(tmp_path_factory.mktemp("expansion")))


def batch(experiment: Experiment, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    host = {
        "images": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
        "token_ids": rng.integers(5, experiment.tokenizer.vocab_size, (BATCH, 16)).astype(np.int32),
        "mask": np.arange(16)[None, :] < rng.integers(4, 17, (BATCH, 1)),
    }
    return parallel.host_batch_to_global(host, experiment.mesh)


def one_step(experiment: Experiment, overrides: dict, optimizer=SGD, state=None, data=None):
    """(state before, state after, metrics) of one jitted train step under the experiment's config + overrides
    (not validated: some of these configs are the ones validation refuses)."""
    config = set_keys(experiment.config.copy_and_resolve_references(), overrides)
    vocabulary = Vocabulary.from_tokenizer(experiment.tokenizer, True)
    step = jax.jit(make_train_step(experiment.model, optimizer, lambda _: 0.5, config, vocabulary))
    if state is None:
        state = experiment.state_factory().create(0)
        state = state.replace(opt_state=optimizer.init(state.params))
    after, metrics = step(state, batch(experiment) if data is None else data)
    return jax.device_get(state), jax.device_get(after), metrics


def changed(before: dict, after: dict) -> dict[str, bool]:
    """{path: whether the leaf moved} over a params subtree."""
    pairs = zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after))
    return {jax.tree_util.keystr(path): not np.array_equal(old, new) for (path, old), new in pairs}


ONLINE_NO_MLM = {"objective.ela.target_source": "online", "objective.mlm_weight": 0.0, "objective.ela.beta": 0.5}


def test_flops_leaves_a_text_lexicon_head_that_no_loss_trains_alone(experiment):
    """Online expansion with MLM off: the targets are stop-gradient, so nothing but FLOPS could move the text head."""
    before, after, metrics = one_step(experiment, {**ONLINE_NO_MLM, "objective.flops_weight": 1.0})
    assert float(metrics["loss_flops"]) > 0.0
    text_head = changed(before.params["text_lexicon"], after.params["text_lexicon"])
    assert not any(text_head.values()), f"text lexicon head moved: {text_head}"
    assert any(changed(before.params["image_lexicon"], after.params["image_lexicon"]).values())


def test_the_online_text_side_gets_no_gradient_from_the_ela_loss(experiment):
    only_ela = {**ONLINE_NO_MLM, "objective.global_weight": 0.0, "objective.flops_weight": 0.0}
    before, after, metrics = one_step(experiment, only_ela)
    _, _, without_expansion = one_step(experiment, {**only_ela, "objective.ela.beta": 0.0})
    assert abs(float(metrics["loss_ela"]) - float(without_expansion["loss_ela"])) > 1e-4, "a_T shapes the targets"
    for group in ("text_tower", "text_lexicon"):
        moved = changed(before.params[group], after.params[group])
        assert not any(moved.values()), f"{group} moved under L_ela alone: {moved}"
    assert any(changed(before.params["image_lexicon"], after.params["image_lexicon"]).values())


@pytest.mark.parametrize("form", ["softmax", "sparse"])
def test_the_ela_loss_builds_its_targets_in_the_configured_form(experiment, form):
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


def test_the_log_logit_scales_are_clamped_after_the_update(experiment):
    """An optimizer that adds 1 to every parameter: the log scales end at log(1 / min_temperature), the rest moves."""
    add_one = optax.stateless(lambda updates, params: jax.tree.map(jax.numpy.ones_like, updates))
    cap = max_log_scale(experiment.config.model)
    state = experiment.state_factory().create(0)
    near_cap = {name: jax.numpy.asarray(cap - 0.5) for name in ("global_log_scale", "fine_log_scale")}
    state = state.replace(params={**state.params, **near_cap})
    before, after, _ = one_step(experiment, {}, optimizer=add_one, state=state.replace(opt_state=add_one.init(None)))
    for name in ("global_log_scale", "fine_log_scale"):
        np.testing.assert_allclose(after.params[name], cap, rtol=1e-7, err_msg=name)
    np.testing.assert_allclose(after.params["text_global"]["kernel"], before.params["text_global"]["kernel"] + 1.0)
