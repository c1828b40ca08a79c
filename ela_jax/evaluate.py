"""python -m ela_jax.evaluate --workdir W [--step N] [--config.KEY=VALUE ...] -> W/eval/results.json

Evaluates a checkpoint of W with W's own config (written by training); `--config.*` overrides apply on top, e.g.
`--config.eval.scores='("global",)'` or `--config.data.num_test=5000`. The training run's evaluation data writes
W/eval/results.json (as training does); another dataset (`--config.data.eval_name=coco ...`) writes
W/eval/results_<dataset>.json beside it.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from ela_jax import parallel
from ela_jax.cli import parse_flags, quiet_libraries
from ela_jax.config import ConfigError


def _workdir_from_argv(argv: list[str]) -> str | None:
    """The workdir is needed before flags are parsed: the config flag's defaults are that run's config."""
    for index, arg in enumerate(argv):
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
        if arg == "--workdir" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def experiment_from_flags():
    """The workdir's experiment with the command line's overrides (after joining a multi-process job); a config that
    cannot run exits with one line."""
    quiet_libraries()
    parallel.initialize_distributed()
    from ela_jax import config as config_lib
    from ela_jax.experiment import Experiment

    try:
        return Experiment.build(flags.FLAGS.config, flags.FLAGS.workdir)
    except config_lib.ConfigError as error:
        sys.exit(f"config error: {error}")


def write_on_chief(path: str, results: dict) -> None:
    """Every process computes the results; process 0 alone writes them."""
    import jax

    from ela_jax.training.loop import write_json

    if jax.process_index() == 0:
        write_json(path, results)


def keyed_file(prefix: str, dataset: str, split: str = "test") -> str:
    """`<prefix>_<dataset>[_<split>].json`: one file per dataset (and non-test split), so evaluations on several
    datasets sit side by side instead of overwriting each other."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", dataset).strip("_")
    return f"{prefix}_{slug}.json" if split == "test" else f"{prefix}_{slug}_{split}.json"


def results_file(evaluated_data, trained_data) -> str:
    """results.json for the data training evaluated on (training writes it too), else results_<dataset>.json."""
    from ela_jax.data.pipeline import eval_source

    name, manual_dir = eval_source(evaluated_data)
    if (name, manual_dir) == eval_source(trained_data):
        return "results.json"
    folder = os.path.basename(manual_dir.rstrip("/"))
    return keyed_file("results", name if folder in ("", name) else f"{name}_{folder}")


def main(argv) -> None:
    del argv
    experiment = experiment_from_flags()
    from ela_jax.experiment import load_config
    from ela_jax.training.loop import Evaluation

    state = experiment.restore_state(flags.FLAGS.step)
    results = Evaluation(experiment)(state.params, int(state.step))
    name = results_file(experiment.config.data, load_config(experiment.workdir).data)
    write_on_chief(os.path.join(experiment.workdir, "eval", name), results)
    for score, metrics in results["scores"].items():
        print(
            f"{score}: RSUM {metrics['rsum']:.1f}  I->T R@1/5/10 "
            + "/".join(f"{metrics[f'text_retrieval_recall@{k}']:.1f}" for k in (1, 5, 10))
            + "  T->I R@1/5/10 "
            + "/".join(f"{metrics[f'image_retrieval_recall@{k}']:.1f}" for k in (1, 5, 10))
        )


def define_flags(argv: list[str], program: str = "ela_jax.evaluate") -> None:
    from ela_jax.experiment import load_config

    workdir = _workdir_from_argv(argv)
    if workdir is None:
        sys.exit(f"usage: python -m {program} --workdir W [--step N] [--config.KEY=VALUE ...]")
    try:
        config = load_config(workdir)
    except (FileNotFoundError, ConfigError) as error:
        sys.exit(str(error))
    config_flags.DEFINE_config_dict("config", config, "The run's config (from W/config.json) with overrides.")
    flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.")
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")


if __name__ == "__main__":
    define_flags(sys.argv)
    app.run(main, flags_parser=parse_flags)
