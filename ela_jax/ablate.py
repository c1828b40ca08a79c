"""python -m ela_jax.ablate: trains a grid of config overrides x seeds, one workdir per run, and tabulates held-out
retrieval (and, on the scenes world, the unnamed-object measure) as mean ± std over seeds, with each row's
differences to a reference row (--reference, default beta0) paired by seed (table.json, table.md, ablation.png).

    python -m ela_jax.ablate --config configs/demo.py --grid ela --seeds 0,1,2 --workdir runs/ablation \
        [--grid_file configs/ablation.py] [--config.KEY=VALUE ...]

Command-line overrides change the base config; each grid entry's overrides then apply on top of it. A run's
identity is its whole resolved config: a workdir trained under another one (other overrides, another base config, a
changed model, tokenizer or eval section) is refused in one line and left out of the table, or moved aside and
retrained with --retrain_mismatched; it is never averaged in. A run is finished when the training run recorded its
final step's evaluation (`eval/results.json` at step `total_steps`) and that step's checkpoint is on disk; what
`python -m ela_jax.evaluate` writes never makes a run finished, but once a run is, its table numbers come from
`python -m ela_jax.evaluate --workdir <run>`'s rescoring of the same final step where there is one (so a measure added
later reaches the table without retraining). Rerunning the command skips finished runs and resumes a
half-finished one from its latest checkpoint, so a killed grid loses at most one checkpoint interval. The table is
rewritten after every finished run, so partial results are always on disk. A grid stopped by SIGTERM (a preempted
job) exits with status 3, so a scheduler reruns it.

Several workers may share one grid (two processes pinned to a core each, or one per machine on a shared disk): a
worker claims a run with an exclusive lock (flock) on a file in its workdir and the others skip it. The kernel drops a
lock when its process dies, so a killed worker's runs are free again at once.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import socket
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ela_jax import config as config_lib
from ela_jax.cli import parse_flags, quiet_libraries
from ela_jax.paths import require_local
from ela_jax.training import restarts
from ela_jax.training.workdir_lock import WorkdirBusy, WorkdirLock

RESULTS_FILE = os.path.join("eval", "results.json")
RUN_SPEC_FILE = "ablation_run.json"
LOCK_FILE = "ablation.lock"
METRICS = (
    ("text_retrieval_recall@1", "I→T R@1"),
    ("text_retrieval_recall@5", "R@5"),
    ("text_retrieval_recall@10", "R@10"),
    ("image_retrieval_recall@1", "T→I R@1"),
    ("image_retrieval_recall@5", "R@5"),
    ("image_retrieval_recall@10", "R@10"),
    ("rsum", "RSUM"),
)
NONZERO_SIDES = (("image", "nnz/image"), ("text", "nnz/caption"))
# The unnamed-object measure (ela_jax/evaluation/unnamed.py), per variant: the image lexicon and the global embeddings.
UNNAMED_KEY = "unnamed_objects"
UNNAMED_VARIANTS = ("lexicon", "global")
UNNAMED_METRICS = (
    ("auc", "AUC"),
    ("auc_within_scene", "AUC in scene"),
    ("recall@1", "R@1"),
    ("recall@5", "R@5"),
    ("query_recall@1", "query R@1"),
    ("query_recall@5", "R@5"),
    ("query_recall@10", "R@10"),
)
# Mute-word presence on the cue world (ela_jax/evaluation/mute_words.py), averaged over the mute words.
MUTE_KEY = "mute_words"
MUTE_METRICS = (
    ("lexicon_auc", "mute AUC"),
    ("lexicon_auc_same_count", "mute AUC, same count"),
    ("lexicon_gap", "mute gap"),
    ("cue_auc", "cue AUC"),
    ("cue_gap", "cue gap"),
    ("global_auc", "mute AUC (global)"),
)
# Paired differences against the reference row, by seed: (label, path into a run's results).
PAIRED = (
    ("global RSUM", ("scores", "global", "rsum")),
    ("lexicon RSUM", ("scores", "lexicon", "rsum")),
    ("unnamed AUC (lexicon)", (UNNAMED_KEY, "lexicon", "auc")),
    ("unnamed AUC (global)", (UNNAMED_KEY, "global", "auc")),
    ("unnamed AUC in scene (lexicon)", (UNNAMED_KEY, "lexicon", "auc_within_scene")),
    ("unnamed R@5 (lexicon)", (UNNAMED_KEY, "lexicon", "recall@5")),
    ("query R@10 (lexicon)", (UNNAMED_KEY, "lexicon", "query_recall@10")),
    ("query R@10 (global)", (UNNAMED_KEY, "global", "query_recall@10")),
    ("nnz/image", ("lexicon_nonzeros", "image")),
    ("mute AUC (lexicon)", (MUTE_KEY, "mean", "lexicon_auc")),
    ("mute AUC, same count", (MUTE_KEY, "mean", "lexicon_auc_same_count")),
    ("mute gap (lexicon)", (MUTE_KEY, "mean", "lexicon_gap")),
)
REFERENCE = "beta0"
MAX_SEED = 2**31 - 1  # seeds reach numpy, grain and jax.random as 32-bit integers


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the grid: dotted config overrides, and how many of the requested seeds it runs."""

    name: str
    overrides: dict
    seeds: int = 2
    description: str = ""


@dataclasses.dataclass
class GridReport:
    trained: list[str]  # "entry/seedN" of the runs trained (or resumed) by this invocation
    skipped: list[str]  # already finished before it started
    busy: list[str]  # claimed by another live worker
    failed: dict[str, str]  # run -> one-line reason; retried by the next invocation
    table: dict
    preempted: bool = False  # SIGTERM stopped the run in flight (its checkpoint is saved)


def load_grid(path: str, name: str) -> list[Entry]:
    """`GRIDS[name]` of a grid file: a list of dicts with Entry's fields."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"grid file {path!r} does not exist")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ValueError(f"grid file {path} does not parse: {error.msg} at line {error.lineno}") from None
    grids = getattr(module, "GRIDS", None)
    if not isinstance(grids, dict):
        raise ValueError(f"grid file {path} defines no GRIDS dict (GRIDS = {{name: [entry dicts]}})")
    if name not in grids:
        raise KeyError(f"grid {name!r} is not in {path}; it defines {sorted(grids)}")
    fields = [field.name for field in dataclasses.fields(Entry)]
    for position, row in enumerate(grids[name]):
        unknown = sorted(set(row) - set(fields)) if isinstance(row, dict) else None
        if unknown is None or unknown or "name" not in row or not isinstance(row.get("overrides", {}), dict):
            raise ValueError(
                f"grid {name!r} row {position} ({row!r}) is not a dict of {fields}"
                + (f": unknown field(s) {unknown}" if unknown else "")
            )
    entries = [Entry(**row) for row in grids[name]]
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"grid {name!r} repeats an entry name: {names}")
    return entries


def select_entries(entries: list[Entry], names: list[str]) -> frozenset[str] | None:
    """--entries as a set of names (None: all); an unknown name is an error, not an empty run."""
    if not names:
        return None
    unknown = sorted(set(names) - {entry.name for entry in entries})
    if unknown:
        raise ValueError(f"--entries names no entry of the grid: {', '.join(unknown)}")
    return frozenset(names)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct integers, got {text!r}")
    out_of_range = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if out_of_range:
        raise ValueError(f"--seeds must be in [0, {MAX_SEED}], got {out_of_range[0]} in {text!r}")
    return seeds


def entry_config(base: ml_collections.ConfigDict, entry: Entry, seed: int) -> ml_collections.ConfigDict:
    """The base config with the entry's overrides and `seed` (model init, data order, MLM masks); an override the
    config cannot take (unknown key, wrong type) is a ConfigError naming the entry."""
    config = copy.deepcopy(base)
    for key, value in entry.overrides.items():
        try:
            config_lib.set_dotted(config, key, value)
        except (TypeError, ValueError) as error:  # ml_collections refuses a value of another type
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise config_lib.ConfigError(f"grid entry {entry.name!r}: {key}={value!r}: {message}") from None
    config.seed = seed
    return config


def entry_seeds(entry: Entry, seeds: list[int]) -> list[int]:
    return seeds[: entry.seeds]


def run_name(entry: Entry, seed: int) -> str:
    return f"{entry.name}/seed{seed}"


def run_spec(entry: Entry, seed: int) -> dict:
    return {"entry": entry.name, "overrides": entry.overrides, "seed": seed}


def check_run_spec(workdir: str, spec: dict) -> None:
    """Refuses a workdir trained under other overrides: mixing its results into this entry would be silent."""
    path = os.path.join(workdir, RUN_SPEC_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            stored = json.load(f)
    except ValueError as error:
        raise config_lib.ConfigError(
            f"{path} is unreadable ({error}); delete the workdir or pass --retrain_mismatched"
        ) from None
    if stored != json.loads(json.dumps(spec)):
        raise config_lib.ConfigError(
            f"{workdir} was trained with {stored['overrides']} (seed {stored['seed']}), not {spec['overrides']} "
            f"(seed {spec['seed']}); delete it or rename the entry"
        )


# What cannot change a run's numbers: where and how it computes, logs and checkpoints. Everything else of the
# resolved config (model, tokenizer and eval sections included) is the run's identity.
COMPUTE_ONLY_SECTIONS = ("mesh", "log", "checkpoint", "train")


def check_base_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir whose config.json (the whole config the run trained under) differs from `config` outside the
    compute-only sections: its results belong to another experiment. Towers loaded from a checkpoint take their
    architecture from it (compared through init.*), and an unreadable config.json cannot vouch for its results."""
    wanted = json.loads(config.to_json_best_effort())
    sections = [section for section in wanted if section not in COMPUTE_ONLY_SECTIONS]
    free = restarts.FREE_BETWEEN_RESTARTS
    free += ("model.text",) * bool(config.init.text_tower) + ("model.image",) * bool(config.init.image_tower)
    try:
        differing = restarts.workdir_config_differences(workdir, config, sections, free)
    except ValueError as error:
        raise config_lib.ConfigError(
            f"{workdir}/config.json is unreadable ({error}); its results cannot be attributed to a config: delete "
            "the workdir or pass --retrain_mismatched"
        ) from None
    if differing:
        listed = ", ".join(differing[:6]) + (f" and {len(differing) - 6} more" if len(differing) > 6 else "")
        raise config_lib.ConfigError(
            f"{workdir} was trained from another base config ({listed} differ); pass the config it used "
            "(e.g. --config.KEY=VALUE), use another --workdir, or pass --retrain_mismatched to move it aside and "
            "retrain"
        )


def write_run_spec(workdir: str, spec: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RUN_SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=1)


def is_finished(workdir: str, total_steps: int) -> bool:
    """The training run recorded the evaluation of its final step and that step's checkpoint is on disk (an
    evaluation of an earlier checkpoint, or of a run cut short, is not a finished run)."""
    try:
        with open(os.path.join(workdir, RESULTS_FILE)) as f:
            recorded_step = json.load(f).get("step")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded_step == total_steps and os.path.isdir(os.path.join(workdir, "checkpoints", str(total_steps)))


def identity_mismatch(workdir: str, entry: Entry, seed: int, config: ml_collections.ConfigDict) -> str:
    """'' when `workdir` is new or holds a run of exactly this entry, seed and config; else why not, in one line."""
    try:
        check_run_spec(workdir, run_spec(entry, seed))
        check_base_config(workdir, config)
    except config_lib.ConfigError as error:
        return str(error)
    return ""


def move_aside(workdir: str) -> str:
    """Renames a mismatched run's workdir to `<workdir>.mismatched[.N]` (kept, out of the table) and returns it."""
    target, suffix = f"{workdir}.mismatched", 1
    while os.path.exists(target):
        target, suffix = f"{workdir}.mismatched.{suffix}", suffix + 1
    os.replace(workdir, target)
    return target


_HELD_LOCKS: dict[str, WorkdirLock] = {}


def claim_run(workdir: str) -> bool:
    """Locks workdir's lock file for this process; False while another live worker holds it (a dead worker's lock
    is gone with its process)."""
    lock = WorkdirLock(workdir, LOCK_FILE)
    if not lock.acquire():
        return False
    _HELD_LOCKS[workdir] = lock
    return True


def release_run(workdir: str) -> None:
    lock = _HELD_LOCKS.pop(workdir, None)
    if lock is not None:
        lock.release()


def schedule(entries: list[Entry], seeds: list[int]) -> list[tuple[Entry, int]]:
    """Seed-major order: every entry's first seed before any second seed, so a partial grid covers every row."""
    order = []
    for index, seed in enumerate(seeds):
        order += [(entry, seed) for entry in entries if index < entry.seeds]
    return order


def train_run(base: ml_collections.ConfigDict, entry: Entry, seed: int, workdir: str) -> tuple[str, str]:
    """Trains (or resumes) one claimed run: ("trained" | "preempted" | "failed", step or one-line reason)."""
    from ela_jax.training import loop  # imports JAX's backends; the CLI sets logging up first

    try:
        spec = run_spec(entry, seed)
        check_run_spec(workdir, spec)
        config = entry_config(base, entry, seed)
        write_run_spec(workdir, spec)
        results = loop.train(config, workdir)
    except (
        config_lib.ConfigError,
        loop.TrainingDiverged,
        WorkdirBusy,
        FileNotFoundError,
        jax.errors.JaxRuntimeError,
    ) as error:
        return "failed", str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "preempted_at_step" in results:
        return "preempted", str(results["preempted_at_step"])
    return "trained", ""


PREEMPTED_STATUS = 3  # a grid stopped by SIGTERM: rerun the same command to go on


def run_grid(
    base: ml_collections.ConfigDict,
    entries: list[Entry],
    seeds: list[int],
    root: str,
    only: frozenset[str] | None = None,
    reference: str = REFERENCE,
    retrain_mismatched: bool = False,
) -> GridReport:
    """Trains every unfinished, unclaimed (entry, seed) under root/<entry>/seed<N> (of the entries named in `only`,
    when given), rewriting the table of the whole grid after each run. The table holds only finished runs whose
    config is the one the grid asks for; a mismatched workdir is reported as failed (or, with `retrain_mismatched`,
    moved aside and retrained)."""
    require_local(root, "the grid's root")
    report = GridReport(trained=[], skipped=[], busy=[], failed={}, table={})
    mine = [entry for entry in entries if only is None or entry.name in only]
    to_train = []
    for entry, seed in schedule(entries, seeds):  # the whole grid: the table covers every entry
        name, workdir = run_name(entry, seed), os.path.join(root, entry.name, f"seed{seed}")
        try:
            config = entry_config(base, entry, seed)
        except config_lib.ConfigError as error:
            mismatch = str(error)
        else:
            mismatch = identity_mismatch(workdir, entry, seed, config)
        if entry not in mine:
            continue
        if mismatch and not (retrain_mismatched and not mismatch.startswith("grid entry")):
            print(f"   {name}: {mismatch}", flush=True)
            report.failed[name] = mismatch
        elif not mismatch and is_finished(workdir, config.total_steps):
            report.skipped.append(name)
        else:
            to_train.append((entry, seed, config, bool(mismatch)))
    for entry, seed, config, mismatched in to_train:
        name, workdir = run_name(entry, seed), os.path.join(root, entry.name, f"seed{seed}")
        if not claim_run(workdir):
            report.busy.append(name)
            continue
        try:
            if mismatched:
                print(f"   {name}: moved the mismatched run to {move_aside(workdir)}", flush=True)
                claim_run(workdir)  # the lock file moved with the old workdir
            elif is_finished(workdir, config.total_steps):  # finished by another worker between the check and claim
                report.skipped.append(name)
                continue
            print(f"== {name}: {entry.overrides}", flush=True)
            outcome, detail = train_run(base, entry, seed, workdir)
        finally:
            release_run(workdir)
        if outcome == "preempted":
            print(f"   preempted at step {detail}; rerun the command to resume", flush=True)
            report.preempted = True
            break
        if outcome == "failed":
            print(f"   {name} failed: {detail}", flush=True)
            report.failed[name] = detail
        elif is_finished(workdir, config.total_steps):
            report.trained.append(name)
        else:
            report.failed[name] = f"training ended without recording the evaluation of step {config.total_steps}"
        report.table = write_outputs(
            entries, seeds, root, report.failed, reference, finished_runs(base, entries, seeds, root)
        )
    report.table = write_outputs(
        entries, seeds, root, report.failed, reference, finished_runs(base, entries, seeds, root)
    )
    return report


def finished_runs(base, entries: list[Entry], seeds: list[int], root: str) -> frozenset[str]:
    """The grid's runs finished on disk under the config the grid asks for, read afresh for every table: other workers
    finish runs while this one trains, and the table each writes must hold theirs too."""
    names = set()
    for entry, seed in schedule(entries, seeds):
        workdir = os.path.join(root, entry.name, f"seed{seed}")
        try:
            config = entry_config(base, entry, seed)
        except config_lib.ConfigError:
            continue
        if not identity_mismatch(workdir, entry, seed, config) and is_finished(workdir, config.total_steps):
            names.add(run_name(entry, seed))
    return frozenset(names)


def read_results(entry: Entry, seeds: list[int], root: str, finished: frozenset[str] | None = None) -> dict[int, dict]:
    """seed -> eval results of the entry's finished runs (those named in `finished`, when given: run_grid passes the
    runs whose config and final record it checked)."""
    results = {}
    for seed in entry_seeds(entry, seeds):
        path = os.path.join(root, entry.name, f"seed{seed}", RESULTS_FILE)
        if finished is not None and run_name(entry, seed) not in finished:
            continue
        if os.path.isfile(path):
            results[seed] = final_results(path)
    return results


def final_results(path: str) -> dict:
    """A run's final record, or where `python -m ela_jax.evaluate` has since scored the same step again (without
    overrides), that re-evaluation: a measure added after the grid trained reaches its table without retraining."""
    with open(path) as f:
        record = json.load(f)
    rescored = os.path.join(os.path.dirname(path), f"results_step{record.get('step')}.json")
    if "step" not in record or not os.path.isfile(rescored):
        return record
    with open(rescored) as f:
        return json.load(f)


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1; None for a single seed)."""
    array = np.asarray(values, np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "std": std, "values": [float(v) for v in array]}


def lookup(results: dict, path: tuple[str, ...]) -> float | None:
    """The number at `path` in a run's results, None where the run has none (e.g. no lexicon score)."""
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return float(results)


def paired_differences(results: dict[int, dict], reference: dict[int, dict]) -> dict:
    """Per PAIRED metric, mean ± std over the seeds both rows finished of (row - reference); metrics either side
    lacks are left out."""
    seeds = sorted(set(results) & set(reference))
    differences = {}
    for label, path in PAIRED:
        pairs = [(lookup(results[s], path), lookup(reference[s], path)) for s in seeds]
        if pairs and all(a is not None and b is not None for a, b in pairs):
            differences[label] = mean_std([a - b for a, b in pairs])
    return {"seeds": seeds, "metrics": differences}


def mute_summary(runs: list[dict]) -> dict:
    """metric -> mean ± std over the runs of the mute-word averages, when every run reports them."""
    if not runs or not all(MUTE_KEY in r for r in runs):
        return {}
    # A measure added after some runs were scored is left out of the row rather than averaged over part of it.
    reported = [key for key, _ in MUTE_METRICS if all(key in r[MUTE_KEY]["mean"] for r in runs)]
    return {key: mean_std([r[MUTE_KEY]["mean"][key] for r in runs]) for key in reported}


def unnamed_summary(runs: list[dict]) -> dict:
    """variant -> metric -> mean ± std over the runs, when every run reports the unnamed-object measure."""
    if not runs or not all(UNNAMED_KEY in r for r in runs):
        return {}
    return {
        variant: {key: mean_std([r[UNNAMED_KEY][variant][key] for r in runs]) for key, _ in UNNAMED_METRICS}
        for variant in UNNAMED_VARIANTS
    }


def summarise(
    entries: list[Entry],
    seeds: list[int],
    root: str,
    failed: dict[str, str] | None = None,
    reference: str = REFERENCE,
    finished: frozenset[str] | None = None,
) -> dict:
    """The table as JSON: per entry, per score, mean ± std over the finished seeds of every metric; the unnamed-object
    measure; and the differences to the `reference` entry paired by seed (when the grid has that entry)."""
    by_name = {entry.name: read_results(entry, seeds, root, finished) for entry in entries}
    rows = []
    for entry in entries:
        results = by_name[entry.name]
        row = {
            "entry": entry.name,
            "description": entry.description,
            "overrides": entry.overrides,
            "seeds_planned": entry_seeds(entry, seeds),
            "seeds_finished": sorted(results),
            "scores": {},
            "lexicon_nonzeros": {},
            UNNAMED_KEY: unnamed_summary(list(results.values())),
            MUTE_KEY: mute_summary(list(results.values())),
        }
        if reference in by_name and entry.name != reference:
            row["paired_vs_reference"] = paired_differences(results, by_name[reference])
        if results:
            runs = list(results.values())
            common_scores = [score for score in runs[0]["scores"] if all(score in r["scores"] for r in runs)]
            for score in common_scores:
                row["scores"][score] = {key: mean_std([r["scores"][score][key] for r in runs]) for key, _ in METRICS}
            # The lexicon vectors' density is what sparse retrieval pays for; it means nothing without a lexicon score.
            if "lexicon" in row["scores"]:
                row["lexicon_nonzeros"] = {
                    side: mean_std([r["lexicon_nonzeros"][side] for r in runs]) for side, _ in NONZERO_SIDES
                }
        rows.append(row)
    return {"rows": rows, "failed": dict(failed or {}), "reference": reference if reference in by_name else None}


def format_cell(stat: dict | None, signed: bool = False) -> str:
    if not stat:
        return "–"
    mean = f"{stat['mean']:+.1f}" if signed else f"{stat['mean']:.1f}"
    if stat["std"] is None:
        return mean
    return f"{mean} ± {stat['std']:.1f}"


def markdown_table(table: dict) -> str:
    header = ["entry", "seeds", "score"] + [label for _, label in METRICS] + [label for _, label in NONZERO_SIDES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        seeds = f"{len(row['seeds_finished'])}/{len(row['seeds_planned'])}"
        if not row["scores"]:
            lines.append(f"| {row['entry']} | {seeds} | – |" + " – |" * (len(METRICS) + len(NONZERO_SIDES)))
            continue
        for score, metrics in row["scores"].items():
            cells = [format_cell(metrics[key]) for key, _ in METRICS]
            nonzeros = row["lexicon_nonzeros"] if score == "lexicon" else {}
            cells += [format_cell(nonzeros.get(side)) for side, _ in NONZERO_SIDES]
            lines.append(f"| {row['entry']} | {seeds} | {score} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n" + unnamed_table(table) + mute_table(table) + paired_table(table)
    if table["failed"]:
        text += "\nFailed runs (retried by the next invocation):\n\n"
        text += "".join(f"- {run}: {reason}\n" for run, reason in sorted(table["failed"].items()))
    return text


def unnamed_table(table: dict) -> str:
    """Markdown: the unnamed-object measure per entry and variant ("" when no run reports it)."""
    rows = [row for row in table["rows"] if row.get(UNNAMED_KEY)]
    if not rows:
        return ""
    header = ["entry", "seeds", "scored by"] + [label for _, label in UNNAMED_METRICS]
    lines = ["", "Objects no caption names (held-out, %):", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for row in rows:
        seeds = f"{len(row['seeds_finished'])}/{len(row['seeds_planned'])}"
        for variant, metrics in row[UNNAMED_KEY].items():
            cells = [format_cell(metrics[key]) for key, _ in UNNAMED_METRICS]
            lines.append(f"| {row['entry']} | {seeds} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mute_table(table: dict) -> str:
    """Markdown: mute-word presence per entry, averaged over the mute words ("" when no run reports it)."""
    rows = [row for row in table["rows"] if row.get(MUTE_KEY)]
    if not rows:
        return ""
    header = ["entry", "seeds"] + [label for _, label in MUTE_METRICS]
    lines = ["", "Mute words, on held-out images of their own scene (%; chance: AUC 50, gap 0):", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seeds = f"{len(row['seeds_finished'])}/{len(row['seeds_planned'])}"
        cells = [format_cell(row[MUTE_KEY].get(key)) for key, _ in MUTE_METRICS]
        lines.append(f"| {row['entry']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(table: dict) -> str:
    """Markdown: each entry minus the reference entry, paired by seed ("" without a reference)."""
    rows = [row for row in table["rows"] if row.get("paired_vs_reference", {}).get("seeds")]
    if not table.get("reference") or not rows:
        return ""
    labels = [label for label, _ in PAIRED if any(label in row["paired_vs_reference"]["metrics"] for row in rows)]
    header = ["entry", "paired seeds"] + labels
    lines = ["", f"Difference to `{table['reference']}`, paired by seed (mean ± std):", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        paired = row["paired_vs_reference"]
        cells = [format_cell(paired["metrics"].get(label), signed=True) for label in labels]
        lines.append(f"| {row['entry']} | {len(paired['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table: dict, path: str) -> str:
    """RSUM per entry (global and lexicon score side by side), error bars = std over seeds; labels say how many of
    the planned seeds finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in table["rows"] if row["scores"]]
    scores = [score for score in ("global", "lexicon") if any(score in row["scores"] for row in rows)]
    figure, axes = plt.subplots(figsize=(9, 1.0 + 0.45 * max(len(rows), 1)))
    height = 0.8 / max(len(scores), 1)
    for index, score in enumerate(scores):
        positions = [i + index * height for i in range(len(rows))]
        stats = [row["scores"].get(score, {}).get("rsum") for row in rows]
        means = [stat["mean"] if stat else 0.0 for stat in stats]
        errors = [stat["std"] or 0.0 if stat else 0.0 for stat in stats]
        axes.barh(positions, means, height, xerr=errors, capsize=3, label=score)
    labels = [f"{row['entry']} ({len(row['seeds_finished'])}/{len(row['seeds_planned'])})" for row in rows]
    axes.set_yticks([i + height * (len(scores) - 1) / 2 for i in range(len(rows))], labels)
    axes.invert_yaxis()
    axes.set_xlabel("held-out RSUM (mean ± std over seeds)")
    if rows:
        axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_outputs(
    entries: list[Entry],
    seeds: list[int],
    root: str,
    failed: dict[str, str],
    reference: str = REFERENCE,
    finished: frozenset[str] | None = None,
) -> dict:
    """table.json, table.md and ablation.png under root; returns the table."""
    table = summarise(entries, seeds, root, failed, reference, finished)
    os.makedirs(root, exist_ok=True)
    # Written aside and renamed: workers sharing the grid rewrite these concurrently, and a reader never sees half.
    prefix = f".tmp.{socket.gethostname()}.{os.getpid()}."  # the extension stays last: matplotlib reads the format
    outputs = {name: os.path.join(root, prefix + name) for name in ("table.json", "table.md", "ablation.png")}
    try:
        with open(outputs["table.json"], "w") as f:
            json.dump(table, f, indent=1)
        with open(outputs["table.md"], "w") as f:
            f.write(markdown_table(table))
        bar_chart(table, outputs["ablation.png"])
        for name, path in outputs.items():
            os.replace(path, os.path.join(root, name))
    finally:  # a failed write (a full disk) leaves the previous tables and no partial files
        for path in outputs.values():
            if os.path.exists(path):
                os.remove(path)
    return table


_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file (configs/*.py).", lock_config=True)
_GRID = flags.DEFINE_string("grid", "ela", "Name of the grid in --grid_file.")
_GRID_FILE = flags.DEFINE_string("grid_file", "configs/ablation.py", "Python file defining GRIDS = {name: [Entry]}.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Seeds (config.seed); each entry runs the first `entry.seeds`.")
_ENTRIES = flags.DEFINE_list(
    "entries",
    [],
    "Train only these entries of the grid (e.g. to put one row first or on another machine); the table "
    "still covers every entry.",
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/ablation", "Root of the per-run workdirs and the table.")
_REFERENCE = flags.DEFINE_string(
    "reference", REFERENCE, "Entry the table's paired differences are taken against (absent from the grid: none)."
)
_RETRAIN_MISMATCHED = flags.DEFINE_bool(
    "retrain_mismatched",
    False,
    "Move a run's workdir trained under another config to <workdir>.mismatched and retrain it (default: refuse it).",
)
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
    del argv
    quiet_libraries()
    try:
        entries = load_grid(_GRID_FILE.value, _GRID.value)
        seeds = parse_seeds(_SEEDS.value)
        only = select_entries(entries, _ENTRIES.value)
    except (FileNotFoundError, KeyError, ValueError) as error:
        sys.exit(f"ablation error: {error}")
    try:
        report = run_grid(
            _CONFIG.value, entries, seeds, _WORKDIR.value, only, _REFERENCE.value, _RETRAIN_MISMATCHED.value
        )
    except config_lib.ConfigError as error:
        sys.exit(f"ablation error: {error}")
    except OSError as error:  # the tables could not be written; the runs' own workdirs are whole
        sys.exit(f"ablation error: writing {error.filename or _WORKDIR.value} failed: {error.strerror or error}")
    print(markdown_table(report.table))
    print(
        f"trained {len(report.trained)}, already finished {len(report.skipped)}, held by other workers "
        f"{len(report.busy)}, failed {len(report.failed)}"
        + (", stopped by SIGTERM (rerun the command to go on)" if report.preempted else "")
        + f"; tables and plot in {_WORKDIR.value}"
    )
    sys.exit(exit_status(report))


def exit_status(report: GridReport) -> int:
    """PREEMPTED_STATUS for a grid SIGTERM stopped, 1 when a run failed, else 0: wrappers rerun a non-zero grid."""
    if report.preempted:
        return PREEMPTED_STATUS
    return 1 if report.failed else 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
