"""python -m ela_jax.evaluate --workdir W [--step N] [--config.KEY=VALUE ...] -> W/eval/results.json

Evaluates a checkpoint of W with W's own config (written by training); `--config.*` overrides apply on top, e.g.
`--config.eval.scores='("global",)'` or `--config.data.num_test=5000`. The training run's evaluation data writes
W/eval/results.json (as training does); another dataset (`--config.data.eval_name=coco ...`) writes
W/eval/results_<dataset>.json beside it.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from ela_jax import parallel
from ela_jax.cli import quiet_libraries
from ela_jax.config import ConfigError
from ela_jax.data.pipeline import eval_source
from ela_jax.evaluation import evaluators
from ela_jax.evaluation.evaluators import keyed_file  # noqa: F401  (evaluate.keyed_file, as before)
from ela_jax.experiment import Experiment, load_config


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
    try:
        return Experiment.build(flags.FLAGS.config, flags.FLAGS.workdir)
    except ConfigError as error:
        sys.exit(f"config error: {error}")


def run_evaluator(experiment, evaluator, output: str | None = None) -> dict:
    """Runs `evaluator` on the checkpoint `--step` names (latest when unset); every process computes the results,
    process 0 alone writes them to W/eval/<output> (the evaluator's own file name when None)."""
    state = experiment.restore_state(flags.FLAGS.step)
    results = evaluator(experiment.encoder(state.params, experiment.config.eval.batch_size), int(state.step))
    if jax.process_index() == 0:
        evaluators.write_json(os.path.join(experiment.workdir, "eval", output or evaluator.output), results)
    return results


def results_file(evaluated_data, trained_data) -> str:
    """results.json for the data training evaluated on (training writes it too), else results_<dataset>.json."""
    name, manual_dir = eval_source(evaluated_data)
    if (name, manual_dir) == eval_source(trained_data):
        return "results.json"
    folder = os.path.basename(manual_dir.rstrip("/"))
    return keyed_file("results", name if folder in ("", name) else f"{name}_{folder}")


def main(argv) -> None:
    del argv
    experiment = experiment_from_flags()
    evaluator = evaluators.build("retrieval", experiment.config, experiment.tokenizer)
    output = results_file(experiment.config.data, load_config(experiment.workdir).data)
    results = run_evaluator(experiment, evaluator, output)
    for score, metrics in results["scores"].items():
        print(
            f"{score}: RSUM {metrics['rsum']:.1f}  I->T R@1/5/10 "
            + "/".join(f"{metrics[f'text_retrieval_recall@{k}']:.1f}" for k in (1, 5, 10))
            + "  T->I R@1/5/10 "
            + "/".join(f"{metrics[f'image_retrieval_recall@{k}']:.1f}" for k in (1, 5, 10))
        )


def define_flags(argv: list[str], program: str = "ela_jax.evaluate") -> None:
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
    app.run(main)
