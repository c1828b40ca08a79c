"""Freezing, per-pattern learning rates and starting from another run's weights (optim.frozen, optim.lr_multipliers,
init.workdir)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ela_jax import config as config_lib
from ela_jax import parallel, validation
from ela_jax.errors import ConfigError
from ela_jax.experiment import Experiment
from ela_jax.training import loop
from ela_jax.training import optimizer as optimizer_lib
from ela_jax.training.checkpoint import Checkpointer, CheckpointError, restore_newest_params
from ela_jax.training.state import TrainState, optimizer_state_shardings
from tests.helpers import make_tiny_config


def toy_params():
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {
        "image_tower": {"embed": {"kernel": normal(4, 3), "bias": normal(3)}, "cls_token": normal(1, 3)},
        "text_tower": {"kernel": normal(3, 5), "bias": normal(5)},
        "image_global": {"kernel": normal(3, 2)},
        "global_log_scale": jnp.float32(2.0),
    }


def optim_config(**keys):
    optim = config_lib.base_config().optim
    optim.update({"warmup_steps": 0, "weight_decay": 0.1, **keys})
    return optim


def run_updates(optim, params, steps: int = 3):
    """`steps` updates with random gradients; returns the params and the optimizer state."""
    optimizer, _ = optimizer_lib.make_optimizer(optim, total_steps=10)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(1)

    @jax.jit
    def update(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        grads = jax.tree.unflatten(treedef, [rng.normal(size=leaf.shape).astype(np.float32) for leaf in leaves])
        params, state = update(params, state, grads)
    return params, state


def test_a_frozen_tower_is_bitwise_unchanged_and_keeps_no_optimizer_state():
    start = toy_params()
    optim = optim_config(frozen=("image_tower/.*",))
    params, state = run_updates(optim, start)
    for before, after in zip(jax.tree.leaves(start["image_tower"]), jax.tree.leaves(params["image_tower"])):
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before))  # no update, no weight decay
    assert not np.allclose(params["text_tower"]["kernel"], start["text_tower"]["kernel"])
    trainable, total = optimizer_lib.count_parameters(start, optim)
    assert (trainable, total) == (15 + 5 + 6 + 1, 27 + 12 + 3 + 3)
    # Adam's two moments cover the trainable values only; the rest is its step count and its schedule's.
    state_values = sum(leaf.size for leaf in jax.tree.leaves(state))
    assert state_values == 2 * trainable + 2


def test_learning_rate_multipliers_scale_their_group_and_the_first_match_wins():
    start = toy_params()
    optim = optim_config(
        weight_decay=0.0, eps=1e-12, lr_multipliers=(("text_tower/kernel", 0.1), ("text_tower/.*", 3.0))
    )
    params, _ = run_updates(optim, start, steps=1)
    step = lambda *path: np.abs(np.asarray(params[path[0]][path[1]]) - np.asarray(start[path[0]][path[1]]))  # noqa: E731
    # Adam's first update is lr * g / (|g| + eps): the learning rate itself, times the group's multiplier (to the
    # float32 rounding of a parameter near 1 moved by 5e-5).
    np.testing.assert_allclose(step("image_global", "kernel"), optim.lr, rtol=1e-2)
    np.testing.assert_allclose(step("text_tower", "kernel"), 0.1 * optim.lr, rtol=1e-2)
    np.testing.assert_allclose(step("text_tower", "bias"), 3.0 * optim.lr, rtol=1e-2)


def test_without_groups_the_optimizer_state_keeps_the_layout_of_earlier_checkpoints():
    optimizer, _ = optimizer_lib.make_optimizer(optim_config(), total_steps=10)
    clip, adamw = optimizer.init(toy_params())
    assert isinstance(adamw[0], optax.ScaleByAdamState)


def test_a_pattern_that_matches_no_parameter_is_refused():
    with pytest.raises(ConfigError, match=r"'image_towr/\.\*' matches no parameter.*such as 'image_tower/embed/bias'"):
        optimizer_lib.parameter_labels(toy_params(), optim_config(frozen=("image_towr/.*",)))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.frozen", ("image_tower/[",), "is not a regular expression"),
        ("optim.lr_multipliers", (("text_tower/.*", 0.0),), "freeze with optim.frozen"),
        ("optim.lr_multipliers", ("text_tower/.*",), r"\(pattern, multiplier\) pairs"),
        ("resume", "/runs/a", "both set the starting weights"),
    ],
)
def test_validation_refuses_bad_groups_and_clashing_starting_points(key, value, message):
    config = make_tiny_config(**{"init.workdir": "/runs/pretrained"})
    config_lib.set_dotted(config, key, value)
    with pytest.raises(ConfigError, match=message):
        validation.validate(config, num_devices=1)


def global_only_config(**keys):
    return make_tiny_config(
        **{"objective.ela_weight": 0.0, "objective.mlm_weight": 0.0, "objective.flops_weight": 0.0, **keys}
    )


def batch(vocab_size: int, size: int = 32):
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
        "token_ids": rng.integers(5, vocab_size, (size, 16)).astype(np.int32),
        "mask": np.arange(16)[None, :] < rng.integers(3, 17, (size, 1)),
    }


def test_optimizer_state_takes_each_parameters_sharding_inside_parameter_groups():
    params = toy_params()
    names = jax.tree_util.tree_map_with_path(lambda path, _: optimizer_lib.path_name(path), params)
    for optim in (optim_config(), optim_config(frozen=("image_tower/.*",), lr_multipliers=(("text_tower/.*", 0.1),))):
        optimizer, _ = optimizer_lib.make_optimizer(optim, total_steps=10)
        abstract = jax.eval_shape(optimizer.init, params)
        shardings = optimizer_state_shardings(abstract, params, names, "replicated")
        for path, sharding in jax.tree_util.tree_flatten_with_path(shardings)[0]:
            if getattr(path[-1], "name", None) == "count":  # Adam's and the schedule's step counts
                assert sharding == "replicated"
            else:  # an Adam moment: its parameter's own "sharding" (here, that parameter's path)
                assert optimizer_lib.path_name(path).endswith(sharding)
        if not optim.frozen:  # the same as optax's own mapping where that one applies
            expected = optax.tree_map_params(
                optimizer, lambda _, name: name, abstract, names, transform_non_params=lambda _: "replicated"
            )
            assert shardings == expected


def save_toy_state(directory: str, step: int, params, optim) -> None:
    optimizer, _ = optimizer_lib.make_optimizer(optim, total_steps=10)
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(zero + step, params, optimizer.init(params), {}, zero, zero)
    checkpointer = Checkpointer(directory, keep=5)
    checkpointer.save(step, state)
    checkpointer.close()


def test_init_workdir_takes_the_newest_weights_that_fit_whatever_optimizer_saved_them(tmp_path):
    params = toy_params()
    save_toy_state(str(tmp_path / "checkpoints"), 1, params, optim_config(frozen=("image_tower/.*",)))
    wider = {**params, "text_tower": {**params["text_tower"], "bias": jnp.zeros(7)}}
    save_toy_state(str(tmp_path / "checkpoints"), 2, wider, optim_config())  # newer, from another model config
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
    restored, step = restore_newest_params(str(tmp_path), abstract)
    assert step == 1
    for saved, loaded in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(saved))
    with pytest.raises(
        CheckpointError,
        match=r"restores into this config.s parameters \(newest, step 2: ValueError: text_tower/bias is \[7\] there, \[5\] in this config\)",
    ):
        restore_newest_params(str(tmp_path / "checkpoints" / "2"), abstract)


@pytest.mark.slow  # the unit tests above cover freezing, the state's shardings and init.workdir's restore
@pytest.mark.integration  # compiles the micro model's train step
def test_a_frozen_tower_trains_saves_and_seeds_a_fine_tuning_run(tmp_path):
    config = global_only_config(**{"optim.frozen": ("image_tower/.*",)})
    experiment = Experiment.build(config, str(tmp_path / "pretrain"))
    factory = experiment.state_factory()
    state = start = factory.create(0)
    start_params = parallel.fetch(start.params)
    train_step = experiment.train_step(factory, donate=False)
    examples = parallel.host_batch_to_global(batch(experiment.tokenizer.vocab_size), experiment.mesh)
    for _ in range(2):
        with parallel.sharding_context(experiment.mesh, parallel.logical_rules(experiment.config.mesh)):
            state, metrics = train_step(state, examples)
    assert float(metrics["skipped"]) == 0.0
    params = parallel.fetch(state.params)
    for before, after in zip(jax.tree.leaves(start_params["image_tower"]), jax.tree.leaves(params["image_tower"])):
        np.testing.assert_array_equal(after, before)
    assert not np.allclose(params["text_global"]["kernel"], start_params["text_global"]["kernel"])

    # The sharded state with its per-group optimizer state saves and restores into the factory's shardings.
    checkpointer = Checkpointer(str(tmp_path / "pretrain" / "checkpoints"), keep=2)
    checkpointer.save(2, state)
    checkpointer.close()
    restored, step = experiment.restore_checkpoint()
    assert step == 2
    for saved, back in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(back), np.asarray(saved))

    # Fine-tuning under another optimizer layout: the weights of that run, a fresh optimizer state at step 0.
    fine_tune = global_only_config(**{"init.workdir": str(tmp_path / "pretrain")})
    tuned = Experiment.build(fine_tune, str(tmp_path / "finetune"))
    tuned_factory = tuned.state_factory()
    empty = Checkpointer(str(tmp_path / "finetune" / "checkpoints"), keep=1)
    initial, initial_step = loop.initial_state(tuned.config, tuned_factory, empty, None)
    empty.close()
    assert initial_step == 0 and int(initial.step) == 0
    for saved, loaded in zip(jax.tree.leaves(params), jax.tree.leaves(parallel.fetch(initial.params))):
        np.testing.assert_array_equal(loaded, saved)
    assert all(not np.any(np.asarray(moment)) for moment in jax.tree.leaves(initial.opt_state[1][0].mu))


def test_init_workdir_without_a_checkpoint_says_so(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        restore_newest_params(str(tmp_path), {})


def test_the_lit_config_validates_and_locks_exactly_the_image_tower(tmp_path):
    from configs import lit

    config = lit.get_config("fsdp")
    config.data.update(name="world", eval_name="", manual_dir="")
    validation.validate(config, num_devices=256)
    # Its patterns on the micro model's parameter tree (same names as B/16's, fewer and smaller leaves).
    small = global_only_config(
        **{"optim.frozen": config.optim.frozen, "optim.lr_multipliers": config.optim.lr_multipliers}
    )
    params = Experiment.build(small, str(tmp_path)).state_factory().abstract_params
    labels = optimizer_lib.parameter_labels(params, config.optim)
    assert set(jax.tree.leaves(labels["image_tower"])) == {optimizer_lib.FROZEN}
    assert set(jax.tree.leaves(labels["text_tower"])) == {optimizer_lib.multiplier_label(0.1)}
    others = [
        label
        for name, group in labels.items()
        if name not in ("image_tower", "text_tower")
        for label in jax.tree.leaves(group)
    ]
    assert set(others) == {optimizer_lib.multiplier_label(1.0)}
