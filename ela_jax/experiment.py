"""What training, evaluation and inference share: a validated config with its tokenizer, model and mesh."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os

import jax
import ml_collections
from jax.sharding import Mesh

from ela_jax import config as config_lib
from ela_jax import validation
from ela_jax import parallel
from ela_jax import paths
from ela_jax.convert import from_pytorch
from ela_jax.evaluation.encode import Encoder
from ela_jax.data import tokenizer as tokenizer_lib
from ela_jax.models import lexicon
from ela_jax.models.ela import ELAModel
from ela_jax.training import optimizer as optimizer_lib
from ela_jax.training.checkpoint import Checkpointer
from ela_jax.training.state import StateFactory
from ela_jax.training.step import Vocabulary, jit_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    workdir: str
    tokenizer: tokenizer_lib.Tokenizer
    model: ELAModel
    mesh: Mesh

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, workdir: str, devices=None) -> "Experiment":
        """Validates first (nothing compiles on a bad config), then resolves the vocabulary size and pretrained
        towers' architectures into a copy: the experiment's config is `experiment.config`, the caller's is untouched.
        `devices`: the mesh's (default: this job's), e.g. a TPU slice's compile-only devices for ahead-of-time
        compilation."""
        devices = jax.devices() if devices is None else list(devices)
        processes = len({device.process_index for device in devices})
        validation.validate(config, len(devices), processes)
        config = copy.deepcopy(config)
        if uses_a_bucket(config, workdir):
            paths.limit_bucket_request_tries(config.train.bucket_request_tries)
        paths.makedirs(workdir)
        tokenizer = tokenizer_lib.from_config(config.tokenizer, workdir, config.data.world)
        vocab_size = config.model.vocab_size
        if vocab_size == config_lib.VOCAB_SIZE_FROM_TOKENIZER:
            config.model.vocab_size = tokenizer.vocab_size
        elif vocab_size != tokenizer.vocab_size:
            raise config_lib.ConfigError(
                f"model.vocab_size {vocab_size} differs from the tokenizer's "
                f"{tokenizer.vocab_size} words; set it to -1 to follow the tokenizer"
            )
        check_vocab_sharding(config, len(devices))
        config.model.sigmoid.enabled = config.objective.global_loss == "sigmoid"  # the loss's logit bias
        # Towers started from Hugging Face checkpoints take their architecture from them (or fail here, uncompiled).
        from_pytorch.apply_hf_architecture(config)
        mesh_shape = config_lib.resolve_mesh_shape(config.mesh, len(devices))
        model = ELAModel(model_config_for_mesh(config.model, mesh_shape), special_ids=tokenizer.special_ids)
        return cls(config, workdir, tokenizer, model, parallel.create_mesh(config.mesh, devices))

    def encoder(self, params, batch_size: int) -> Encoder:
        """Batched encoding with these params on this experiment's mesh and axis rules."""
        return Encoder(self.model, params, self.mesh, parallel.logical_rules(self.config.mesh), batch_size)

    def optimizer(self):
        return optimizer_lib.make_optimizer(self.config.optim, self.config.total_steps)

    def state_factory(self) -> StateFactory:
        words = [self.tokenizer.id_to_token(i) for i in range(self.tokenizer.vocab_size)]
        return StateFactory(self.model, self.optimizer()[0], self.config, self.mesh, words)

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.from_tokenizer(self.tokenizer, self.config.objective.ela.stopwords)

    def train_step(self, factory: StateFactory, donate: bool = True):
        """The jitted, sharded train step on this experiment's mesh (see `training.step.jit_train_step`)."""
        optimizer, schedule = self.optimizer()
        return jit_train_step(
            self.model, optimizer, schedule, self.config, self.vocabulary(), self.mesh, factory.shardings, donate
        )

    def checkpointer(self) -> Checkpointer:
        return Checkpointer(os.path.join(self.workdir, "checkpoints"), self.config.checkpoint.keep)

    def restore_state(self, step: int | None = None):
        """The train state of checkpoint `step` (see `restore_checkpoint`)."""
        return self.restore_checkpoint(step)[0]

    def restore_checkpoint(self, step: int | None = None):
        """(train state, step) of checkpoint `step`, sharded on this experiment's mesh; when None, of the newest
        checkpoint that restores (newer damaged ones are logged and left where they are: readers move nothing)."""
        checkpointer = self.checkpointer()
        abstract_state = self.state_factory().abstract_with_shardings()
        try:
            if step is not None:
                return checkpointer.restore_step(step, abstract_state), step
            newest = checkpointer.restore_newest(abstract_state, set_aside=False)
        finally:
            checkpointer.close()
        if newest is None:
            raise FileNotFoundError(f"no checkpoint under {self.workdir}/checkpoints; train first")
        return newest


def uses_a_bucket(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """True when the workdir or any path the config names (data folders, mixture entries, init or resume runs) is a
    URL."""
    return "://" in workdir or "://" in config.to_json_best_effort()


def model_config_for_mesh(model_config: ml_collections.ConfigDict, mesh_shape) -> ml_collections.ConfigDict:
    """`config.model` as it runs on a (data, fsdp, tensor) mesh: attention slices of a batch that is split over
    devices (presets, hand-set mesh sizes or several processes alike) would live on different devices and be
    resharded, so `attention_batch_splits`, a single-device CPU knob, is switched off there. A copy: the caller's
    config keeps what it asked for."""
    batch_parallel = mesh_shape[0] * mesh_shape[1]
    splits = model_config.attention_batch_splits
    if batch_parallel == 1 or splits == 1:
        return model_config
    log.warning(
        "model.attention_batch_splits=%d switched off: the batch is split over %d devices (mesh data x fsdp), where "
        "slicing attention only adds resharding",
        splits,
        batch_parallel,
    )
    effective = model_config.copy_and_resolve_references()
    effective.attention_batch_splits = 1
    return effective


def check_vocab_sharding(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The vocabulary axis shards over `mesh.tensor`: its padded size must divide evenly."""
    tensor = config_lib.resolve_mesh_shape(config.mesh, num_devices)[2]
    padded = lexicon.padded_size(config.model.vocab_size, config.model.vocab_multiple)
    if padded % tensor:
        raise config_lib.ConfigError(
            f"the vocabulary ({config.model.vocab_size} words, padded to {padded}) does not split over mesh.tensor="
            f"{tensor}; set model.vocab_multiple=128 (outputs and exports keep the real words only)"
        )


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a training run wrote to `workdir/config.json`, locked like a config file's."""
    path = os.path.join(workdir, "config.json")
    if not paths.exists(path):
        raise FileNotFoundError(f"{path} does not exist; is {workdir!r} a training workdir?")
    try:
        raw = json.loads(paths.read_text(path))
    except ValueError as error:
        raise config_lib.ConfigError(
            f"{path} is unreadable ({error}); copy back a config.before_step_<N>.json if there is one, or rerun "
            "training with the config it used (training rewrites the file)"
        ) from None
    if not isinstance(raw, dict):
        raise config_lib.ConfigError(f"{path} holds {type(raw).__name__}, not a config; rerun training to rewrite it")
    config = config_lib.base_config()
    config.unlock()
    config.update_from_flattened_dict(_flatten(raw))
    config.lock()
    return config


def _as_tuples(value):
    """JSON turns the config's tuples (nested ones too, as in mesh.rules) into lists; turn them back."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _as_tuples(value)
    return flat
