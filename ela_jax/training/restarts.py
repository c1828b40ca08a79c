"""The resume rule: which config keys a restarted run may change. A workdir holds one experiment; resuming it under
a config that differs in what its results depend on would mix two experiments (training.loop and ela_jax.ablate refuse
unless told otherwise)."""

from __future__ import annotations

import json
import os

import ml_collections

from ela_jax import config as config_lib
from ela_jax import paths
from ela_jax.training.optimizer import learning_rate_schedule

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
    if not paths.exists(path):
        return []
    stored = json.loads(paths.read_text(path))
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


def schedule_changes(config: ml_collections.ConfigDict, workdir: str, resumed_step: int | None) -> list[str]:
    """One line for each way this run's learning rate differs from what its config seems to say: a total_steps below
    optim.warmup_steps (the warm-up is cut short and nothing decays), or a resume under another total_steps than
    the workdir's config.json (the cosine moves under the checkpoint's step)."""
    optim, total_steps = config.optim, config.total_steps
    changes = []
    if total_steps < optim.warmup_steps:
        changes.append(
            f"total_steps {total_steps} is below optim.warmup_steps {optim.warmup_steps}: the learning rate warms up "
            f"over all {total_steps} steps, reaches optim.lr={optim.lr:g} only at the last one and never decays; "
            "lower optim.warmup_steps or raise total_steps"
        )
    stored_total = _stored_total_steps(workdir) if resumed_step else None
    if stored_total is not None and stored_total != total_steps:
        before = float(learning_rate_schedule(optim, stored_total)(resumed_step))
        after = float(learning_rate_schedule(optim, total_steps)(resumed_step))
        changes.append(
            f"resuming step {resumed_step} with total_steps {total_steps} where {workdir}/config.json has "
            f"{stored_total}: the learning-rate schedule changes (at step {resumed_step} it is {after:.3g}, was "
            f"{before:.3g}); pass --config.total_steps={stored_total} to keep it"
        )
    return changes


def _stored_total_steps(workdir: str) -> int | None:
    """total_steps of the workdir's config.json; None without a readable one."""
    try:
        stored = json.loads(paths.read_text(os.path.join(workdir, "config.json")))
    except (OSError, ValueError):
        return None
    value = stored.get("total_steps") if isinstance(stored, dict) else None
    return value if isinstance(value, int) else None


_MISSING = object()  # a key the wanted config has no longer: always a difference
