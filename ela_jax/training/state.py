"""The train state and its abstract-first, sharded creation (nothing is ever materialised unsharded)."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ela_jax import parallel
from ela_jax.objectives import needs_teacher
from ela_jax.models.ela import TEXT_PARAM_GROUPS, ELAModel, copy_text_lexicon_to_image
from ela_jax.training.teacher import PretrainedTeacher


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # Text-side parameters of the expansion teacher (EMA or frozen copy); empty when no teacher is configured.
    teacher: Any
    # Updates skipped for a non-finite loss or gradient: in a row now, and the longest such run so far.
    bad_steps_in_a_row: jax.Array
    longest_bad_run: jax.Array


def example_inputs(config) -> tuple[jax.Array, jax.Array, jax.Array]:
    size, length = config.model.image.image_size, config.tokenizer.max_length
    return (jnp.zeros((1, size, size, 3), jnp.uint8), jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), bool))


def teacher_params(params: dict) -> dict:
    return {group: params[group] for group in TEXT_PARAM_GROUPS}


def optimizer_state_shardings(abstract_opt_state: Any, abstract_params: Any, param_shardings: Any, other) -> Any:
    """Each optimizer-state leaf that mirrors a parameter (an Adam moment, in whichever parameter group holds it) gets
    that parameter's sharding, every other leaf (step counts) `other`. A leaf mirrors a parameter when its tree path
    ends with the parameter's path and their shapes agree; unlike `optax.tree_map_params` this also sees through
    `optax.multi_transform` and `optax.masked`, whose states hold parts of the parameter tree."""
    params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    shardings = jax.tree.leaves(param_shardings)
    by_path = {tuple(path): (leaf.shape, sharding) for (path, leaf), sharding in zip(params, shardings)}
    lengths = sorted({len(path) for path in by_path}, reverse=True)

    def sharding_of(path, leaf):
        for length in lengths:
            shape, sharding = by_path.get(tuple(path[-length:]), (None, None))
            if sharding is not None and shape == leaf.shape:
                return sharding
        return other

    return jax.tree_util.tree_map_with_path(sharding_of, abstract_opt_state)


class StateFactory:
    """Builds the train state directly into its shardings on `mesh`, and describes them."""

    def __init__(
        self, model: ELAModel, optimizer: optax.GradientTransformation, config, mesh: Mesh, words: list[str] = ()
    ):
        self.model, self.optimizer, self.config, self.mesh = model, optimizer, config, mesh
        self.words = list(words)  # the tokenizer's vocabulary in id order: what a pretrained teacher re-spells
        self.pretrained = None
        if needs_teacher(config) and config.objective.ela.target_source == "pretrained":
            self.pretrained = PretrainedTeacher.from_config(config)
        self.rules = parallel.logical_rules(config.mesh)
        boxed = jax.eval_shape(self._boxed_params, jax.random.key(0))
        self.param_logical_specs = nn.get_partition_spec(boxed)
        self.abstract_params = nn.unbox(boxed)
        self.param_shardings = parallel.logical_to_shardings(self.param_logical_specs, mesh, self.rules)
        self.abstract_state = jax.eval_shape(self._create, jax.random.key(0))
        self.shardings = self._state_shardings()

    def _boxed_params(self, rng: jax.Array) -> Any:
        return self.model.init(rng, *example_inputs(self.config))["params"]

    def _create(self, rng: jax.Array) -> TrainState:
        params = nn.unbox(self._boxed_params(rng))
        if self.config.model.lexicon.init_image_from_text:
            params = copy_text_lexicon_to_image(params, self.config.model.lexicon.tie_text_decoder)
        return self.state_from_params(params)

    def initial_teacher(self, params: Any) -> Any:
        if not needs_teacher(self.config):
            return {}
        if self.pretrained is not None:  # random until load_pretrained_teacher fills in the checkpoint
            return self.pretrained.init_params(jax.random.key(0), self.config.tokenizer.max_length)
        return teacher_params(params)

    def state_from_params(self, params: Any) -> TrainState:
        teacher = self.initial_teacher(params)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero,
            params=params,
            opt_state=self.optimizer.init(params),
            teacher=teacher,
            bad_steps_in_a_row=zero,
            longest_bad_run=zero,
        )

    def _state_shardings(self) -> TrainState:
        replicated = parallel.replicated(self.mesh)
        opt_shardings = optimizer_state_shardings(
            self.abstract_state.opt_state, self.abstract_params, self.param_shardings, replicated
        )
        teacher = teacher_params(self.param_shardings) if needs_teacher(self.config) else {}
        if self.pretrained is not None:  # a small frozen model: every device keeps all of it
            teacher = jax.tree.map(lambda _: replicated, self.abstract_state.teacher)
        return TrainState(
            step=replicated,
            params=self.param_shardings,
            opt_state=opt_shardings,
            teacher=teacher,
            bad_steps_in_a_row=replicated,
            longest_bad_run=replicated,
        )

    def create(self, seed: int) -> TrainState:
        with parallel.sharding_context(self.mesh, self.rules):
            return jax.jit(self._create, out_shardings=self.shardings)(jax.random.key(seed))

    def from_params(self, params: Any) -> TrainState:
        """A fresh state (step 0, new optimizer state, teacher) around given params, e.g. imported weights."""
        with parallel.sharding_context(self.mesh, self.rules):
            return jax.jit(self.state_from_params, in_shardings=(self.param_shardings,), out_shardings=self.shardings)(
                params
            )

    def load_pretrained_teacher(self, state: TrainState) -> TrainState:
        """The state with the pretrained teacher's checkpoint in place of its random init (no-op without one)."""
        if self.pretrained is None:
            return state
        params = self.pretrained.load_params(self.words, parallel.fetch(state.teacher))
        return state.replace(teacher=parallel.host_tree_to_global(params, self.shardings.teacher))

    def abstract_with_shardings(self) -> TrainState:
        """ShapeDtypeStructs carrying the target shardings: what a checkpoint restore fills in."""
        return jax.tree.map(
            lambda abstract, sharding: jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=sharding),
            self.abstract_state,
            self.shardings,
        )
