"""orbax checkpoints holding the train state and the grain iterator together, so resume continues the data stream."""

from __future__ import annotations

import logging
import os
import re

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or written; the message names the path and the cause."""


def root_cause(error: BaseException) -> str:
    """The operating-system error behind a chain of wrapped exceptions (else the outermost), in one line. TensorStore
    reports it as text: `... local file "PATH" ... [os_error_code='N']`."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"[Errno {seen.errno}] {seen.strerror}" + (f": {seen.filename}" if seen.filename else "")
        code = re.search(r"os_error_code='(\d+)'", str(seen))
        if code:
            path = re.search(r'local file "([^"]+)"', str(seen))
            return f"[Errno {code[1]}] {os.strerror(int(code[1]))}" + (f": {path[1]}" if path else "")
        seen = seen.__cause__ or seen.__context__
    return one_line(error)


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as `Type: first line`, short enough for a one-line report."""
    text = str(error).strip().splitlines()
    first = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


class Checkpointer:
    """Saves and restores {state, data iterator} under `directory` (one sub-directory per step, written atomically:
    orbax finalises a step by renaming its temporary directory, so a killed save leaves no step that looks whole).

    With `best_metric`, orbax keeps the `keep` steps with the best value of that metric instead of the latest ones.
    """

    def __init__(self, directory: str, keep: int, best_metric: str = "", best_mode: str = "max", create: bool = True):
        ranking = {}
        if best_metric:
            ranking = dict(
                best_fn=lambda metrics: metrics[best_metric],
                best_mode=best_mode,
                keep_checkpoints_without_metrics=False,
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=True, **ranking
        )
        self.directory = os.path.abspath(directory)
        self.failed = False  # a save failed and was reported
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, metrics: dict | None = None) -> None:
        args = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:  # orbax first waits for the previous save, and re-raises what that one hit
            self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics)
        except Exception as error:  # noqa: BLE001
            self.failed = True
            raise self._save_failed(error) from None

    def restore(self, step: int, abstract_state, data_iterator=None):
        """State at `step` into the shardings of `abstract_state`; the iterator, if given, is set in place."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

    def restore_newest(self, abstract_state, data_iterator=None, set_aside: bool = True):
        """(state, step) of the newest step that restores; None when there is no step. Each newer step that does not
        restore is logged with the reason and, with `set_aside` (a run that will save again), moved to
        `<directory>_damaged/` (kept for inspection, and out of orbax's reach: a later save of the same step neither
        collides with it nor deletes it). Raises CheckpointError, moving nothing, when steps exist but none restores
        (a config that no longer fits them)."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except Exception as error:  # noqa: BLE001 - whatever makes a step unreadable, an older one may serve
                damaged.append((step, one_line(error)))
                log.warning("checkpoint step %d in %s does not restore (%s)", step, self.directory, damaged[-1][1])
                continue
            if set_aside:
                self._set_aside([step for step, _ in damaged])
            return state, step
        if damaged:
            step, reason = damaged[0]
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores (newest, step {step}: {reason}); if the config changed, "
                "use the one it was saved with, else move that directory away to start afresh"
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        aside = self.directory + "_damaged"
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, str(step))
                suffix = 1
                while os.path.exists(target):
                    target, suffix = os.path.join(aside, f"{step}.{suffix}"), suffix + 1
                os.replace(os.path.join(self.directory, str(step)), target)
                log.warning("moved the unreadable checkpoint step %d to %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("damaged checkpoints set aside")
        self.manager.reload()

    def check_saved(self) -> None:
        """Raises CheckpointError once an asynchronous save has failed: orbax itself says so only at the next save,
        after training that nothing durable backs. Cheap while a save is running (it is not waited for)."""
        if self.manager.is_saving_in_progress():
            return
        try:
            self.manager.wait_until_finished()  # returns at once, or raises what the finished save hit
        except Exception as error:  # noqa: BLE001 - orbax re-raises whatever its writer threads hit
            self.failed = True
            raise self._save_failed(error) from None

    def close(self) -> None:
        """Waits for the save in flight and releases orbax's threads; CheckpointError if that save failed (once)."""
        try:
            self.manager.close()
        except Exception as error:  # noqa: BLE001
            if not self.failed:
                raise self._save_failed(error) from None

    def _save_failed(self, error: BaseException) -> CheckpointError:
        return CheckpointError(
            f"saving a checkpoint under {self.directory} failed: {root_cause(error)}; free space or fix the "
            "directory, then rerun the same command to resume from the last checkpoint"
        )


def restore_newest_params(path: str, abstract_params):
    """(params, step) of the newest checkpoint under `path` (see `locate`; a step directory names that step) whose
    params restore into `abstract_params` (ShapeDtypeStructs with shardings, so the mesh may differ from the one that
    saved them); the optimizer state, teacher and data position are not read. Raises CheckpointError when none does.
    """
    directory, step = locate(path)
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
    )
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    failures = []
    try:
        for step in steps:
            try:
                misfit = params_misfit(manager.item_metadata(step)["state"], abstract_params)
                if misfit:
                    raise ValueError(misfit)
                return manager.restore(step, args=args)["state"]["params"], step
            except Exception as error:  # noqa: BLE001 - whatever makes a step unreadable, an older one may serve
                failures.append((step, one_line(error)))
                log.warning("checkpoint step %d in %s does not restore (%s)", step, directory, failures[-1][1])
    finally:
        manager.close()
    if not failures:
        raise CheckpointError(f"{directory} holds no complete checkpoint; give a run that saved one")
    step, reason = failures[0]
    raise CheckpointError(
        f"no checkpoint in {directory} restores into this config's parameters (newest, step {step}: {reason}); the "
        "model and tokenizer must match that run's config.json"
    )


def params_misfit(state_metadata, abstract_params) -> str:
    """'' when the checkpoint's saved params have every parameter of `abstract_params` in its shape, else the first
    parameter that is missing or shaped otherwise (found from the metadata, before anything is read)."""
    saved = getattr(state_metadata, "tree", state_metadata)["params"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        node = saved
        for key in path:
            node = node.get(str(getattr(key, "key", key))) if isinstance(node, dict) else None
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        if node is None:
            return f"the checkpoint has no parameter {name}"
        if tuple(node.shape) != tuple(leaf.shape):
            return f"{name} is {list(node.shape)} there, {list(leaf.shape)} in this config"
    return ""


def locate(path: str) -> tuple[str, int | None]:
    """A training workdir, its `checkpoints/` directory, or one step directory in it -> (checkpoints directory,
    step; None meaning the latest). Raises FileNotFoundError naming what was looked for."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(name)
    if os.path.isdir(path) and any(entry.isdigit() for entry in os.listdir(path)):
        return path, None
    raise FileNotFoundError(
        f"{path!r} holds no checkpoints; give a training workdir, its checkpoints/ directory or a step directory"
    )
