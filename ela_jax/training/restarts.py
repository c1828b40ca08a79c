"""The resume rule: which config keys a restarted run may change. A workdir holds one experiment; resuming it under
a config that differs in what its results depend on would mix two experiments (training.loop and ela_jax.ablate refuse
unless told otherwise)."""

from __future__ import annotations

import json
import os

import ml_collections

from ela_jax import config as config_lib

# What a run's results depend on. A workdir whose config.json differs here holds another experiment: resuming it
# under this config would mix the two and rewrite its record (training.loop refuses unless
# train.allow_config_change). Compute and memory knobs (threads, remat, chunking, attention slices, compute dtype;
# the mesh, eval, log and checkpoint sections) may change between restarts, as after an out-of-memory error or on
# another machine.
EXPERIMENT_SECTIONS = ("seed", "batch_size", "data", "tokenizer", "model", "objective", "optim")
FREE_BETWEEN_RESTARTS = (
    "data.num_threads",
    "data.prefetch_buffer_size",
    "data.dir",
    "model.dtype",
    "model.remat",
    "model.remat_policy",
    "model.lexicon.chunk",
    "model.lexicon.impl",
    "model.lexicon.pallas_interpret",
    "model.attention_batch_splits",
)


def workdir_config_differences(
    workdir: str, config: ml_collections.ConfigDict, sections=EXPERIMENT_SECTIONS, free=FREE_BETWEEN_RESTARTS
):
    """`config_differences` between the config.json a run wrote in `workdir` and `config` ([] when there is none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        stored = json.load(f)
    return config_differences(stored, json.loads(config.to_json_best_effort()), sections, free)


def config_differences(stored: dict, wanted: dict, sections=EXPERIMENT_SECTIONS, free=FREE_BETWEEN_RESTARTS):
    """Dotted keys under `sections` where `stored` (a config.json) differs from `wanted` (the same JSON form). Keys the
    stored config lacks are options added since it ran (at their defaults), not differences."""

    def walk(old, new, path: str):
        if path in free or (path == "model.vocab_size" and new == config_lib.VOCAB_SIZE_FROM_TOKENIZER):
            return []  # a vocabulary size still to be read from the (compared) tokenizer
        if isinstance(old, dict) and isinstance(new, dict):
            return [
                key for name, value in old.items() for key in walk(value, new.get(name, _MISSING), f"{path}.{name}")
            ]
        return [] if old == new else [path]

    return [
        key for section in sections if section in stored for key in walk(stored[section], wanted.get(section), section)
    ]


_MISSING = object()  # a key the wanted config has no longer: always a difference
