"""Experiment trackers beside metrics.jsonl and TensorBoard, off by default: Weights & Biases (`log.wandb.project`)
and any tracker of the user's (`log.tracker = "module:function"`). Each gets every logged record and the final
evaluation, from the chief process only."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
from typing import Protocol

from ela_jax import paths
from ela_jax.errors import ConfigError

WANDB_RUN_ID_FILE = "wandb_run_id"


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class WandbTracker:
    """A Weights & Biases run. Its id is kept in W/wandb_run_id, so a restarted run (preempted, resumed) continues
    the same wandb run rather than starting a second one. `client` is the `wandb` module or a stand-in for it."""

    def __init__(self, config, workdir: str, client):
        settings = config.log.wandb
        id_path = os.path.join(workdir, WANDB_RUN_ID_FILE)
        if paths.exists(id_path):
            run_id = paths.read_text(id_path).strip()
        else:
            run_id = secrets.token_hex(4)
            paths.write_text(id_path, run_id + "\n")
        self.run = client.init(
            project=settings.project,
            entity=settings.entity or None,
            name=settings.name or os.path.basename(paths.absolute(workdir).rstrip("/")),
            mode=settings.mode,
            id=run_id,
            resume="allow",
            dir=None if paths.is_remote(workdir) else workdir,  # wandb keeps its files on a local disk
            config=json.loads(config.to_json_best_effort()),
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({name: float(value) for name, value in metrics.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "log.wandb.project is set but wandb is not installed; pip install 'ela_jax[wandb]', or leave "
            "log.wandb.project empty"
        ) from None
    return wandb


def user_tracker(config, workdir: str) -> Tracker:
    """The tracker `log.tracker` ("module:function") makes from (config, workdir)."""
    module_name, _, function_name = config.log.tracker.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"log.tracker={config.log.tracker!r} names no importable function ({error}); give it as "
            "'package.module:function', with the module on PYTHONPATH"
        ) from None
    return factory(config, workdir)


def start(config, workdir: str, wandb_client=None) -> list[Tracker]:
    """The trackers the config asks for (none by default). `wandb_client` stands in for the `wandb` module."""
    trackers = []
    if config.log.wandb.project:
        trackers.append(WandbTracker(config, workdir, wandb_client or import_wandb()))
    if config.log.tracker:
        trackers.append(user_tracker(config, workdir))
    return trackers


@contextlib.contextmanager
def opened(config, workdir: str, enabled: bool):
    """`start`'s trackers (none where not `enabled`: every process but the chief), closed however the run ends."""
    trackers = start(config, workdir) if enabled else []
    try:
        yield trackers
    finally:
        for tracker in trackers:
            tracker.close()
