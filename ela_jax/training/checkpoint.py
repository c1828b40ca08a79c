"""orbax checkpoints holding the train state and the grain iterator together, so resume continues the data stream."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

from ela_jax import paths

log = logging.getLogger(__name__)

# TensorStore retries a failing GCS request up to 32 times, up to 32 s apart: a bucket that stays unreachable would
# hang a save for many minutes. A few short retries ride out a blip, and an outage ends the run in one line. orbax
# builds every TensorStore context from these defaults (there is no public setting for them).
GCS_REQUEST_RETRIES = {"max_retries": 4, "initial_delay": "0.1s", "max_delay": "1s"}
for _defaults in (tensorstore_utils._BASE_TS_CONTEXT, tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
    _defaults["gcs_request_retries"] = GCS_REQUEST_RETRIES


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
    orbax finalises a step by renaming its temporary directory on a disk, and on object storage, where it renames
    nothing, by a `commit_success.txt` written last; either way a killed save leaves no step that looks whole).

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
        self.directory = paths.absolute(directory)
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

    def restore_step(self, step: int, abstract_state):
        """The state of checkpoint `step` for a reader; CheckpointError in one line (the steps there are, or why the
        step does not restore) instead of orbax's report."""
        steps = sorted(self.manager.all_steps())
        if step not in steps:
            raise CheckpointError(f"{self.directory} has no checkpoint step {step}; the steps there are {steps}")
        state, reason = self._try_restore(step, abstract_state)
        if reason:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not restore ({reason}); if the config changed "
                "since it was saved, use the one it was saved with"
            )
        return state

    def _try_restore(self, step: int, abstract_state, data_iterator=None):
        """(state, '') or (None, why not in one line), whatever makes the step unreadable. The error is dropped inside
        the quieting: what orbax left behind is collected, unreported, before it ends."""
        with quiet_libraries_while_restoring():
            try:
                return self.restore(step, abstract_state, data_iterator), ""
            except Exception as error:  # noqa: BLE001 - an older step may serve, or the caller says it in one line
                return None, one_line(error)

    def restore_newest(self, abstract_state, data_iterator=None, set_aside: bool = True):
        """(state, step) of the newest step that restores; None when there is no step. Each newer step that does not
        restore is logged with the reason and, with `set_aside` (a run that will save again), moved to
        `<directory>_damaged/` (kept for inspection, and out of orbax's reach: a later save of the same step neither
        collides with it nor deletes it). Raises CheckpointError, moving nothing, when steps exist but none restores
        (a config that no longer fits them)."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            state, reason = self._try_restore(step, abstract_state, data_iterator)
            if reason:
                damaged.append((step, reason))
                log.warning("checkpoint step %d in %s does not restore (%s)", step, self.directory, reason)
                continue
            if set_aside:
                self._set_aside([step for step, _ in damaged])
            return state, step
        if damaged:
            step, reason = damaged[0]
            saved_by = saved_process_count(os.path.join(self.directory, str(step)))
            if saved_by is not None and saved_by != jax.process_count():
                raise CheckpointError(
                    f"no checkpoint in {self.directory} restores: step {step} was saved by a job of {saved_by} "
                    f"processes and this one has {jax.process_count()}; resume it with {saved_by} processes (e.g. "
                    f"python -m launch.local --processes {saved_by} -- ..., or JAX_NUM_PROCESSES={saved_by})"
                )
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
            paths.makedirs(aside)
            for step in steps:
                target = os.path.join(aside, str(step))
                suffix = 1
                while paths.exists(target):
                    target, suffix = os.path.join(aside, f"{step}.{suffix}"), suffix + 1
                move(os.path.join(self.directory, str(step)), target)
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


def move(source: str, target: str) -> None:
    """A step directory to another place: a rename on a disk; a copy, then a delete, on object storage."""
    if paths.is_remote(source):
        # epath's own client: the one orbax lists steps with, whose cached listings must see the move.
        filesystem = epath.backend.fsspec_backend.fs(source)
        filesystem.mv(source, target, recursive=True)
        filesystem.invalidate_cache()
    else:
        os.replace(source, target)


def saved_process_count(step_directory: str) -> int | None:
    """How many processes saved a checkpoint step: grain writes one `process_<i>-of-<n>.json` per process."""
    names = [path.name for path in epath.Path(step_directory, "data").glob("process_*-of-*.json")]
    counts = {int(match[1]) for name in names if (match := re.search(r"-of-(\d+)\.json$", name))}
    return counts.pop() if len(counts) == 1 else None


@contextlib.contextmanager
def quiet_libraries_while_restoring():
    """orbax, TensorStore and grain report a failed restore from every array they read, tracebacks included: as log
    records, and as "Exception ignored" reports of the reading coroutines that failed beside the one raised. The caller
    reports the failure once, in one line, so for the attempt their records below CRITICAL are dropped, and so are the
    reports of orbax's coroutines (collected before it ends, so none is reported later)."""
    loggers = [logging.getLogger(name) for name in QUIETED_WHILE_RESTORING]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _without_orbax_coroutines(previous_hook)
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous_hook
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _without_orbax_coroutines(unraisablehook):
    def hook(unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if code is None or f"{os.sep}orbax{os.sep}" not in code.co_filename:
            unraisablehook(unraisable)

    return hook


QUIETED_WHILE_RESTORING = ("absl", "orbax", "grain", "tensorstore", "jax._src.distributed")


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
    path = paths.absolute(path).rstrip("/")
    if epath.Path(path, "checkpoints").is_dir():
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(path)
    if name.isdigit() and epath.Path(path).is_dir():
        return os.path.dirname(path), int(name)
    if epath.Path(path).is_dir() and any(entry.name.isdigit() for entry in epath.Path(path).iterdir()):
        return path, None
    raise FileNotFoundError(
        f"{path!r} holds no checkpoints; give a training workdir, its checkpoints/ directory or a step directory"
    )
