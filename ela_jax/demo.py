"""python -m ela_jax.demo --workdir W: trains ELA and the CLIP baseline on the embedded world, evaluates both on the
held-out split, prints the retrieval table and writes plots (what `make demo` runs).

python -m ela_jax.demo --world cues --workdir W: information augmentation on the cue world instead. Trains the
expansive row (configs/cues_expansive.py) and its beta = 0 twin, prints retrieval and each mute word's presence AUC
(words no caption contains), and draws each mute word's patch map under both runs."""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags

from ela_jax import config as config_lib
from ela_jax import plots
from ela_jax.cli import parse_flags, quiet_libraries
from ela_jax.evaluation import tables
from ela_jax.retrieval import heatmap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"ELA": "configs/demo.py", "CLIP baseline": "configs/clip_baseline.py"}
# The cue world's runs: (config file, overrides, workdir name).
CUE_RUNS = {
    "ELA, expansive": ("configs/cues_expansive.py", {}, "expansive"),
    "ELA, beta = 0": ("configs/cues_expansive.py", {"objective.ela.beta": 0.0}, "beta0"),
}
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where both runs and the plots go.")
_WORLD = flags.DEFINE_enum("world", "shapes", ["shapes", "cues"], "shapes: ELA against CLIP; cues: mute words.")
_STEPS = flags.DEFINE_integer("steps", 0, "Override total_steps of both runs (0 keeps the configs').")


def load_config_file(path: str):
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, REPO)
    spec.loader.exec_module(module)
    return module.get_config()


def train_or_exit(config, workdir: str) -> dict:
    from ela_jax.training import loop  # imports JAX's backends; the CLI sets logging up first

    try:
        return loop.train(config, workdir)
    except config_lib.ConfigError as error:
        sys.exit(f"config error: {error}")


def mute_word_table(results: dict[str, dict]) -> str:
    """Markdown: per mute word, each run's presence AUC (plain, and against images holding as many objects)."""
    runs = list(results)
    header = "| mute word | " + " | ".join(f"{run}: AUC | same count" for run in runs) + " |"
    lines = [header, "|---|" + "---|---|" * len(runs)]
    words = list(results[runs[0]]["mute_words"]["words"]) + ["mean"]
    for word in words:
        cells = []
        for run in runs:
            measure = results[run]["mute_words"]
            metrics = measure["mean"] if word == "mean" else measure["words"][word]
            cells += [f"{metrics['lexicon_auc']:.1f}", f"{metrics['lexicon_auc_same_count']:.1f}"]
        lines.append(f"| {word} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cue_world_demo() -> None:
    results, workdirs = {}, {}
    for run, (config_path, overrides, name) in CUE_RUNS.items():
        config = load_config_file(os.path.join(REPO, config_path))
        for key, value in overrides.items():
            config_lib.set_dotted(config, key, value)
        if _STEPS.value:
            config.total_steps = _STEPS.value
        workdirs[run] = os.path.join(_WORKDIR.value, name)
        print(f"== {run}: {config_path} {overrides or ''} -> {workdirs[run]}", flush=True)
        results[run] = train_or_exit(config, workdirs[run])
    table = tables.results_table(results) + "\n\nMute words (chance 50), held-out images of their own scene:\n\n"
    table += mute_word_table(results)
    with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
        f.write(table + "\n")
    maps = heatmap.write_mute_word_maps(workdirs, os.path.join(_WORKDIR.value, "mute_word_maps"))
    print(f"\nHeld-out retrieval and mute words on the cue world:\n\n{table}\n\nmute-word maps: {', '.join(maps)}")


def main(argv) -> None:
    del argv
    quiet_libraries()
    if _WORLD.value == "cues":
        return cue_world_demo()
    results, zeroshot = {}, {}
    for run, config_path in RUNS.items():
        config = load_config_file(os.path.join(REPO, config_path))
        if _STEPS.value:
            config.total_steps = _STEPS.value
        workdir = os.path.join(_WORKDIR.value, run.split()[0].lower())
        print(f"== {run}: {config_path} -> {workdir}", flush=True)
        results[run] = train_or_exit(config, workdir)
        if (run_zeroshot := tables.read_zeroshot(workdir, config)) is not None:
            zeroshot[run] = run_zeroshot
    table = tables.results_table(results, zeroshot)
    with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
        f.write(table + "\n")
    plot = plots.compare_runs(results, os.path.join(_WORKDIR.value, "comparison.png"))
    ela_workdir = os.path.join(_WORKDIR.value, "ela")
    heatmaps = heatmap.write_heatmaps(ela_workdir, os.path.join(ela_workdir, "plots"), count=3)
    print(
        f"\nHeld-out retrieval on the embedded world ({results['ELA']['num_images']} images, "
        f"{results['ELA']['num_captions']} captions):\n\n{table}\n\nplots: {plot}, */plots/training_curves.png, "
        f"lexicon-patch heatmaps: {', '.join(heatmaps)}"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
