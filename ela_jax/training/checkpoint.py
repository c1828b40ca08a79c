"""orbax checkpoints holding the train state and the grain iterator together, so resume continues the data stream."""

from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp


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
        self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics)

    def restore(self, step: int, abstract_state, data_iterator=None):
        """State at `step` into the shardings of `abstract_state`; the iterator, if given, is set in place."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
