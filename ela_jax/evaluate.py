"""python -m ela_jax.evaluate --workdir W [--step N] [--output DIR] [--config.KEY=VALUE ...]
    -> W/eval/results_step<N>[_<overrides>].json

Evaluates a checkpoint of W with W's own config (written by training); `--config.*` overrides apply on top, e.g.
`--config.eval.scores='("global",)'` or `--config.data.num_test=5000`. A reader never replaces the training run's
record (W/eval/results.json): it writes its own file, named by the step it read and, under overrides, by a digest of
them (another dataset, `--config.data.eval_name=coco ...`, is named too: results_coco_step<N>.json), into W/eval or
--output; the file records the step, the workdir and every override.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from ela_jax import parallel, paths
from ela_jax.cli import parse_flags, quiet_libraries, unknown_key_message
from ela_jax.config import ConfigError
from ela_jax.data.pipeline import eval_source
from ela_jax.evaluation import evaluators
from ela_jax.evaluation.evaluators import keyed_file  # noqa: F401  (evaluate.keyed_file, as before)
from ela_jax.experiment import Experiment, load_config
from ela_jax.training import restarts
from ela_jax.training.checkpoint import CheckpointError


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
    cannot run, or an --output that cannot hold files, exits with one line."""
    quiet_libraries()
    check_output_dir(flags.FLAGS.output)
    parallel.initialize_distributed()
    try:
        return Experiment.build(flags.FLAGS.config, flags.FLAGS.workdir)
    except ConfigError as error:
        sys.exit(f"config error: {error}")


def check_output_dir(output: str | None) -> None:
    if output is not None and os.path.exists(output) and not os.path.isdir(output):
        sys.exit(f"output error: --output {output} is an existing file; give a folder (it is created if missing)")


def overrides(workdir: str, config) -> dict:
    """{dotted key: value} where `config` differs from the config training recorded in workdir/config.json."""
    stored = json.loads(paths.read_text(os.path.join(workdir, "config.json")))
    wanted = json.loads(config.to_json_best_effort())
    differing = restarts.config_differences(stored, wanted, sections=list(wanted), free=())
    return {key: _lookup(wanted, key) for key in differing}


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None  # a key this config no longer has
        tree = tree[part]
    return tree


def reader_file(output: str, step: int, changed: dict) -> str:
    """`<stem>_step<N>.json`, plus a digest of the overrides when there are any: a reader's file never has the name
    of a record training writes, and evaluations under different overrides sit side by side."""
    stem = output.removesuffix(".json")
    if not changed:
        return f"{stem}_step{step}.json"
    digest = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{stem}_step{step}_{digest}.json"


def run_evaluator(
    experiment,
    evaluator,
    output: str | None = None,
    program: str = "ela_jax.evaluate",
    step: int | None = None,
    output_dir: str | None = None,
) -> dict:
    """Runs `evaluator` on checkpoint `step` (latest when None); every process computes the results, process 0 alone
    writes them, with the step read and every override, to `output_dir` or W/eval (see `reader_file`). A checkpoint
    that cannot be read, or a file that cannot be written, exits with one line."""
    try:
        state = experiment.restore_state(step)
    except (FileNotFoundError, CheckpointError) as error:
        sys.exit(f"checkpoint error: {error}")
    step = int(state.step)
    results = evaluator(experiment.encoder(state.params, experiment.config.eval.batch_size), step)
    changed = overrides(experiment.workdir, experiment.config)
    results = {**results, "read_by": program, "workdir": paths.absolute(experiment.workdir), "overrides": changed}
    folder = output_dir or os.path.join(experiment.workdir, "eval")
    path = os.path.join(folder, reader_file(output or evaluator.output, step, changed))
    if jax.process_index() == 0:
        try:
            paths.write_json(path, results)
        except OSError as error:
            sys.exit(f"output error: writing {path} failed ({error.strerror or error}); nothing was written")
        print(f"wrote {path}")
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
    results = run_evaluator(experiment, evaluator, output, step=flags.FLAGS.step, output_dir=flags.FLAGS.output)
    for score, metrics in results["scores"].items():
        print(
            f"{score}: RSUM {metrics['rsum']:.1f}  I->T R@1/5/10 "
            + "/".join(f"{metrics[f'text_retrieval_recall@{k}']:.1f}" for k in (1, 5, 10))
            + "  T->I R@1/5/10 "
            + "/".join(f"{metrics[f'image_retrieval_recall@{k}']:.1f}" for k in (1, 5, 10))
        )


def define_flags(argv: list[str], program: str = "ela_jax.evaluate", flag_values=flags.FLAGS) -> None:
    """Defines --config (W's config; the command line's overrides are applied here, so a typo'd key exits with one
    line), --workdir, --step and --output."""
    workdir = _workdir_from_argv(argv)
    if workdir is None:
        sys.exit(f"usage: python -m {program} --workdir W [--step N] [--output DIR] [--config.KEY=VALUE ...]")
    try:
        config = load_config(workdir)
    except (FileNotFoundError, ConfigError) as error:
        sys.exit(str(error))
    try:
        config_flags.DEFINE_config_dict(
            "config", config, "The run's config (from W/config.json) with overrides.", flag_values, sys_argv=argv
        )
    except (AttributeError, KeyError) as error:
        sys.exit(unknown_key_message(error))
    flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.", flag_values)
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).", flag_values)
    flags.DEFINE_string(
        "output", None, "Folder for the results file (default: W/eval); the name carries the step.", flag_values
    )


if __name__ == "__main__":
    define_flags(sys.argv)
    app.run(main, flags_parser=parse_flags)
