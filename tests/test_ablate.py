"""The ablation runner: it trains a grid, writes the tables, resumes instead of retraining, and its grid file fits."""

from __future__ import annotations

import json
import importlib
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ela_jax import ablate
from ela_jax import config as config_lib
from ela_jax import validation
from tests.helpers import HOLD_LOCK, make_tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results_path(root: str, run: str) -> str:
    return os.path.join(root, run, ablate.RESULTS_FILE)


@pytest.mark.integration  # trains a grid
def test_grid_trains_writes_tables_and_resumes(tmp_path, compilation_cache):
    """(The session's compilation cache lets the second run load the programs the first compiled.)"""
    # CLIP-only steps keep the compile small; the entries differ in what they evaluate, not in what they compile.
    base = make_tiny_config(
        **{
            "total_steps": 3,
            "batch_size": 16,
            "data.num_train": 64,
            "data.num_test": 16,
            "eval.batch_size": 16,
            "objective.ela_weight": 0.0,
            "objective.mlm_weight": 0.0,
            "objective.flops_weight": 0.0,
            "checkpoint.every_steps": 0,
        }
    )
    entries = [
        ablate.Entry("global_only", {"eval.scores": ("global",)}),
        ablate.Entry("with_lexicon", {"eval.scores": ("global", "lexicon")}),
    ]
    root = str(tmp_path / "grid")

    first = ablate.run_grid(base, entries, [3], root)
    assert first.trained == ["global_only/seed3", "with_lexicon/seed3"] and not first.skipped and not first.failed
    for name in ("table.json", "table.md", "ablation.png"):
        assert os.path.getsize(os.path.join(root, name)) > 0
    with open(os.path.join(root, "table.json")) as f:
        rows = {row["entry"]: row for row in json.load(f)["rows"]}
    assert rows["global_only"]["seeds_finished"] == [3] and set(rows["global_only"]["scores"]) == {"global"}
    assert not rows["global_only"]["lexicon_nonzeros"]
    assert set(rows["with_lexicon"]["scores"]) == {"global", "lexicon"}
    assert rows["with_lexicon"]["lexicon_nonzeros"]["image"]["mean"] > 0
    with open(results_path(root, "with_lexicon/seed3")) as f:
        rsum = json.load(f)["scores"]["global"]["rsum"]
    assert rows["with_lexicon"]["scores"]["global"]["rsum"] == {"mean": rsum, "std": None, "values": [rsum]}
    with open(os.path.join(root, "global_only", "seed3", "config.json")) as f:
        assert json.load(f)["seed"] == 3

    # A second invocation trains nothing and leaves finished results untouched.
    finished_at = {run: os.path.getmtime(results_path(root, run)) for run in first.trained}
    second = ablate.run_grid(base, entries, [3], root)
    assert second.trained == [] and second.skipped == first.trained
    assert {run: os.path.getmtime(results_path(root, run)) for run in first.trained} == finished_at

    # A run without results (killed before its evaluation) is the only one redone, from its final checkpoint.
    os.remove(results_path(root, "with_lexicon/seed3"))
    third = ablate.run_grid(base, entries, [3], root)
    assert third.trained == ["with_lexicon/seed3"] and third.skipped == ["global_only/seed3"]
    with open(os.path.join(root, "with_lexicon", "seed3", "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == sorted(set(steps)) and steps[-1] == 3  # resumed at the end: no step trained twice


def write_results(root: str, run: str, rsum: float, nonzeros: float | None) -> None:
    scores = {"global": {key: rsum / 7 for key, _ in ablate.METRICS}}
    scores["global"]["rsum"] = rsum
    if nonzeros is not None:
        scores["lexicon"] = dict(scores["global"])
    os.makedirs(os.path.dirname(results_path(root, run)), exist_ok=True)
    with open(results_path(root, run), "w") as f:
        json.dump({"scores": scores, "lexicon_nonzeros": {"image": nonzeros or 0.0, "text": 2 * (nonzeros or 0.0)}}, f)


def test_table_is_mean_and_sample_std_over_finished_seeds(tmp_path):
    root = str(tmp_path)
    entries = [ablate.Entry("a", {}, seeds=3), ablate.Entry("b", {}, seeds=1), ablate.Entry("c", {})]
    for seed, rsum, nonzeros in ((0, 50.0, 10.0), (1, 54.0, 12.0), (2, 61.0, 17.0)):
        write_results(root, f"a/seed{seed}", rsum, nonzeros)
    write_results(root, "b/seed0", 40.0, None)
    write_results(root, "b/seed1", 99.0, None)  # beyond the entry's seed count: not part of its row
    table = ablate.summarise(entries, [0, 1, 2], root, {"c/seed0": "config error: x"})
    a, b, c = table["rows"]
    assert a["scores"]["global"]["rsum"]["mean"] == pytest.approx(np.mean([50, 54, 61]))
    assert a["scores"]["global"]["rsum"]["std"] == pytest.approx(np.std([50, 54, 61], ddof=1))
    assert a["lexicon_nonzeros"]["text"]["mean"] == pytest.approx(2 * np.mean([10, 12, 17]))
    assert b["seeds_finished"] == [0] and b["scores"]["global"]["rsum"]["std"] is None and not b["lexicon_nonzeros"]
    assert c["seeds_planned"] == [0, 1] and not c["scores"]
    text = ablate.markdown_table(table)
    assert f"| a | 3/3 | global | {a['scores']['global']['text_retrieval_recall@1']['mean']:.1f} ± " in text
    assert "| b | 1/1 | global |" in text and "| c | 0/2 | – |" in text and "c/seed0: config error: x" in text


def write_scenes_results(root: str, run: str, rsum: float, auc: float) -> None:
    """Results of a scenes-world run: global and lexicon scores and the unnamed-object measure of both variants."""
    scores = {score: {key: rsum / 7 for key, _ in ablate.METRICS} for score in ("global", "lexicon")}
    scores["global"]["rsum"], scores["lexicon"]["rsum"] = rsum, rsum - 10
    measure = {key: auc / 2 for key, _ in ablate.UNNAMED_METRICS}
    unnamed = {"lexicon": {**measure, "auc": auc}, "global": {**measure, "auc": auc - 5}, "num_images": 500}
    results = {"scores": scores, "lexicon_nonzeros": {"image": 9.0, "text": 4.0}, ablate.UNNAMED_KEY: unnamed}
    os.makedirs(os.path.dirname(results_path(root, run)), exist_ok=True)
    with open(results_path(root, run), "w") as f:
        json.dump(results, f)


def test_table_reports_the_unnamed_measure_and_differences_paired_by_seed(tmp_path):
    root = str(tmp_path)
    entries = [ablate.Entry("beta0", {}, seeds=3), ablate.Entry("expand", {}, seeds=3), ablate.Entry("clip", {})]
    reference, expand = {0: (50.0, 60.0), 1: (58.0, 61.0), 2: (52.0, 64.0)}, {0: (53.0, 70.0), 2: (60.0, 66.0)}
    for seed, (rsum, auc) in reference.items():
        write_scenes_results(root, f"beta0/seed{seed}", rsum, auc)
    for seed, (rsum, auc) in expand.items():
        write_scenes_results(root, f"expand/seed{seed}", rsum, auc)
    write_results(root, "clip/seed0", 45.0, None)  # no lexicon score, no measure
    table = ablate.summarise(entries, [0, 1, 2], root)
    beta0, row, clip = table["rows"]
    assert "paired_vs_reference" not in beta0 and table["reference"] == "beta0"
    assert row[ablate.UNNAMED_KEY]["lexicon"]["auc"]["mean"] == pytest.approx(68.0)
    assert row[ablate.UNNAMED_KEY]["global"]["auc"]["values"] == pytest.approx([65.0, 61.0])
    paired = row["paired_vs_reference"]
    assert paired["seeds"] == [0, 2]  # seed 1 of `expand` is not finished: its reference run is left unpaired
    rsum_differences = [53.0 - 50.0, 60.0 - 52.0]
    assert paired["metrics"]["global RSUM"]["mean"] == pytest.approx(np.mean(rsum_differences))
    assert paired["metrics"]["global RSUM"]["std"] == pytest.approx(np.std(rsum_differences, ddof=1))
    assert paired["metrics"]["unnamed AUC (lexicon)"]["values"] == pytest.approx([10.0, 2.0])
    assert paired["metrics"]["nnz/image"]["values"] == pytest.approx([0.0, 0.0])
    # CLIP-only has no lexicon score: its paired lexicon and unnamed differences are left out, not zero.
    assert set(clip["paired_vs_reference"]["metrics"]) == {"global RSUM", "nnz/image"}
    assert not clip[ablate.UNNAMED_KEY]
    text = ablate.markdown_table(table)
    assert "| expand | 2/3 | lexicon | 68.0 ± 2.8 |" in text
    assert "| expand | 2 | +5.5 ± 3.5 | +5.5 ± 3.5 | +6.0 ± 5.7 |" in text
    assert "Difference to `beta0`" not in ablate.markdown_table(ablate.summarise(entries[1:], [0, 1, 2], root))


def test_seed_major_schedule_and_seed_parsing():
    entries = [ablate.Entry("key", {}, seeds=3), ablate.Entry("rest", {}, seeds=2)]
    order = [(entry.name, seed) for entry, seed in ablate.schedule(entries, [5, 6, 7])]
    assert order == [("key", 5), ("rest", 5), ("key", 6), ("rest", 6), ("key", 7)]
    assert ablate.parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a"):
        with pytest.raises(ValueError, match="--seeds"):
            ablate.parse_seeds(bad)


def test_workdir_of_other_overrides_is_refused(tmp_path):
    workdir = str(tmp_path)
    ablate.write_run_spec(workdir, ablate.run_spec(ablate.Entry("e", {"objective.ela.beta": 0.3}), 0))
    ablate.check_run_spec(workdir, ablate.run_spec(ablate.Entry("e", {"objective.ela.beta": 0.3}), 0))
    with pytest.raises(config_lib.ConfigError, match="delete it or rename the entry"):
        ablate.check_run_spec(workdir, ablate.run_spec(ablate.Entry("e", {"objective.ela.beta": 0.5}), 0))
    # The spec holds only the entry's overrides; config.json catches a changed base config (e.g. a new demo default).
    config = ablate.entry_config(make_tiny_config(), ablate.Entry("e", {}), 0)
    stored = json.loads(config.to_json())
    del stored["objective"]["ela"]["teacher_dir"]  # options added after a run was trained are not differences
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(stored, f)
    ablate.check_base_config(workdir, config)
    config.objective.ela.loss = "lex_contrastive"
    with pytest.raises(config_lib.ConfigError, match=r"another base config \(objective.ela.loss differ"):
        ablate.check_base_config(workdir, config)
    with pytest.raises(config_lib.ConfigError, match="no key 'betta'"):
        ablate.entry_config(make_tiny_config(), ablate.Entry("typo", {"objective.ela.betta": 0.3}), 0)


def test_every_entry_of_the_shipped_grid_is_a_valid_demo_config():
    from configs import demo

    base = demo.get_config()
    grid_file = os.path.join(REPO, "configs", "ablation.py")
    entries = ablate.load_grid(grid_file, "ela") + ablate.load_grid(grid_file, "minilm")
    assert {"clip", "filip", "ela_beta0"} <= {entry.name for entry in entries}
    for entry in entries:
        config = ablate.entry_config(base, entry, seed=1)
        validation.validate(config, jax.device_count())
        assert config.seed == 1
    with pytest.raises(KeyError, match="no_such_grid"):
        ablate.load_grid(os.path.join(REPO, "configs", "ablation.py"), "no_such_grid")


ENV = {**os.environ, "PYTHONPATH": REPO}


@pytest.mark.parametrize(("grid", "config_name"), [("scenes", "scenes"), ("demo", "demo")])
def test_every_entry_of_the_expansion_grids_is_a_valid_config(grid, config_name):
    base = importlib.import_module(f"configs.{config_name}").get_config()
    entries = ablate.load_grid(os.path.join(REPO, "configs", "ablation.py"), grid)
    assert {"clip", "beta0"} <= {entry.name for entry in entries} and all(entry.seeds == 3 for entry in entries)
    for entry in entries:
        validation.validate(ablate.entry_config(base, entry, seed=2), jax.device_count())
    if grid == "scenes":  # clip, beta0, and 3 sources x 2 target forms x 2 beta schedules
        assert len(entries) == 14 and len({tuple(sorted(e.overrides.items())) for e in entries}) == 14


@pytest.mark.integration  # spawns processes
def test_workers_share_a_grid_through_run_locks(tmp_path):
    root = str(tmp_path)
    entries = [ablate.Entry("done", {}, seeds=1), ablate.Entry("held", {}, seeds=1)]
    fake_finished_run(root, entries[0], 0, make_tiny_config())
    held = os.path.join(root, "held", "seed0")
    assert ablate.claim_run(held) and not ablate.claim_run(held)  # this process holds it now

    report = ablate.run_grid(make_tiny_config(), entries, [0], root)
    assert report.skipped == ["done/seed0"] and report.busy == ["held/seed0"] and not report.trained
    assert os.path.isfile(os.path.join(held, ablate.LOCK_FILE))  # another worker's lock is left alone
    assert sorted(os.listdir(root)) == ["ablation.png", "done", "held", "table.json", "table.md"]  # no temp files
    only_done = ablate.run_grid(make_tiny_config(), entries, [0], root, ablate.select_entries(entries, ["done"]))
    assert only_done.skipped == ["done/seed0"] and not only_done.busy  # `held` is not this worker's to try
    assert [row["entry"] for row in only_done.table["rows"]] == ["done", "held"]  # the table covers the whole grid
    assert ablate.select_entries(entries, []) is None
    with pytest.raises(ValueError, match="no entry of the grid: typo"):
        ablate.select_entries(entries, ["done", "typo"])

    ablate.release_run(held)
    assert ablate.claim_run(held)
    ablate.release_run(held)

    # A live worker's lock is respected; once that worker dies its lock is gone, whatever its file still says.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, held, ablate.LOCK_FILE], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert holder.stdout.readline().strip() == "held"
    assert not ablate.claim_run(held)
    holder.kill()
    holder.wait()
    assert ablate.claim_run(held)
    ablate.release_run(held)


def fake_finished_run(root: str, entry, seed: int, base, rsum: float = 50.0, **trained_with) -> str:
    """A workdir as a finished grid run leaves it, without training: its config.json (the entry's config, changed by
    the dotted `trained_with`), run spec, final checkpoint directory and final evaluation record."""
    config = ablate.entry_config(base, entry, seed)
    for key, value in trained_with.items():
        config_lib.set_dotted(config, key, value)
    workdir = os.path.join(root, entry.name, f"seed{seed}")
    os.makedirs(os.path.join(workdir, "checkpoints", str(config.total_steps)))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    ablate.write_run_spec(workdir, ablate.run_spec(entry, seed))
    write_results(root, run_name := f"{entry.name}/seed{seed}", rsum, None)
    with open(results_path(root, run_name)) as f:
        results = json.load(f)
    with open(results_path(root, run_name), "w") as f:
        json.dump({**results, "step": config.total_steps}, f)
    return workdir


def test_a_finished_run_of_another_model_or_eval_config_is_refused_not_averaged(tmp_path):
    root, base = str(tmp_path), make_tiny_config()
    entry = ablate.Entry("a", {}, seeds=3)
    fake_finished_run(root, entry, 0, base, rsum=40.0, **{"model.image.depth": 3})
    fake_finished_run(root, entry, 1, base, rsum=60.0)
    fake_finished_run(root, entry, 2, base, rsum=20.0, **{"eval.scores": ("global",)})
    report = ablate.run_grid(base, [entry], [0, 1, 2], root)
    assert report.skipped == ["a/seed1"] and not report.trained
    assert sorted(report.failed) == ["a/seed0", "a/seed2"]
    assert "model.image.depth" in report.failed["a/seed0"] and "--retrain_mismatched" in report.failed["a/seed0"]
    assert "eval.scores" in report.failed["a/seed2"]
    (row,) = report.table["rows"]
    assert row["seeds_finished"] == [1] and row["scores"]["global"]["rsum"]["values"] == [60.0]
    assert ablate.exit_status(report) == 1


def test_retrain_mismatched_moves_the_old_run_aside_and_trains_it_again(tmp_path, monkeypatch):
    root, base = str(tmp_path), make_tiny_config()
    entry = ablate.Entry("a", {}, seeds=1)
    workdir = fake_finished_run(root, entry, 0, base, **{"model.embed_dim": 8})

    def train_run(base_config, trained_entry, seed, into):
        assert not os.path.exists(os.path.join(into, "config.json"))  # a fresh workdir, not the old run's
        fake_finished_run(root, trained_entry, seed, base_config, rsum=70.0)
        return "trained", ""

    monkeypatch.setattr(ablate, "train_run", train_run)
    report = ablate.run_grid(base, [entry], [0], root, retrain_mismatched=True)
    assert report.trained == ["a/seed0"] and not report.failed
    assert os.path.isfile(os.path.join(workdir + ".mismatched", "config.json"))
    assert report.table["rows"][0]["scores"]["global"]["rsum"]["values"] == [70.0]


def test_an_evaluation_of_an_earlier_step_is_not_a_finished_run(tmp_path):
    """`evaluate` on a half-trained run (or an older evaluate that wrote eval/results.json) leaves a results file of
    an earlier step: the run is still to be trained, and the table leaves it out."""
    root, base = str(tmp_path), make_tiny_config()
    entry = ablate.Entry("a", {}, seeds=1)
    workdir = fake_finished_run(root, entry, 0, base)
    assert ablate.is_finished(workdir, base.total_steps)
    with open(results_path(root, "a/seed0")) as f:
        results = json.load(f)
    with open(results_path(root, "a/seed0"), "w") as f:
        json.dump({**results, "step": 10}, f)
    assert not ablate.is_finished(workdir, base.total_steps)
    assert ablate.claim_run(workdir)  # held: run_grid must not train it here, only find it unfinished
    try:
        report = ablate.run_grid(base, [entry], [0], root)
    finally:
        ablate.release_run(workdir)
    assert report.busy == ["a/seed0"] and not report.skipped
    assert report.table["rows"][0]["seeds_finished"] == []
    os.rmdir(os.path.join(workdir, "checkpoints", str(base.total_steps)))  # final record without its checkpoint
    with open(results_path(root, "a/seed0"), "w") as f:
        json.dump({**results, "step": base.total_steps}, f)
    assert not ablate.is_finished(workdir, base.total_steps)


def test_a_row_of_the_wrong_type_fails_in_one_line_and_later_rows_still_run(tmp_path):
    root, base = str(tmp_path), make_tiny_config()
    entries = [ablate.Entry("bad", {"total_steps": "many"}, seeds=1), ablate.Entry("good", {}, seeds=1)]
    fake_finished_run(root, entries[1], 0, base)
    report = ablate.run_grid(base, entries, [0], root)
    assert report.skipped == ["good/seed0"]
    (reason,) = report.failed.values()
    assert reason.startswith("grid entry 'bad': total_steps='many': ") and "\n" not in reason


def test_a_grid_stopped_by_sigterm_exits_non_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(ablate, "train_run", lambda *args: ("preempted", "5"))
    entries = [ablate.Entry("a", {}, seeds=1), ablate.Entry("b", {}, seeds=1)]
    report = ablate.run_grid(make_tiny_config(), entries, [0], str(tmp_path))
    assert report.preempted and not report.failed and not report.trained
    assert ablate.exit_status(report) == ablate.PREEMPTED_STATUS != 0


BAD_GRID_FILES = [
    ("X = 1\n", "defines no GRIDS dict"),
    ("GRIDS = {'g': [dict(name='a', overides={})]}\n", "unknown field(s) ['overides']"),
    ("GRIDS = {'g': [dict(name='a'\n", "does not parse: "),
]


@pytest.mark.parametrize("text, expected", BAD_GRID_FILES, ids=["no_grids", "unknown_field", "syntax_error"])
def test_a_bad_grid_file_is_one_line(tmp_path, text, expected):
    path = tmp_path / "grid.py"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        ablate.load_grid(str(path), "g")
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("seeds", ["-1", str(2**70), "0,2147483648"])
def test_seeds_out_of_range_are_refused(seeds):
    with pytest.raises(ValueError, match=r"--seeds must be in \[0, 2147483647\]"):
        ablate.parse_seeds(seeds)


def test_tables_that_cannot_be_written_leave_the_previous_ones_and_no_partial_files(tmp_path, monkeypatch):
    root, entries = str(tmp_path), [ablate.Entry("a", {}, seeds=1)]
    monkeypatch.setattr(ablate, "bar_chart", lambda table, path: pathlib.Path(path).write_bytes(b"chart"))
    ablate.write_outputs(entries, [0], root, {})
    before = {name: (tmp_path / name).read_bytes() for name in ("table.json", "table.md", "ablation.png")}

    def full_disk(table, path):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(ablate, "bar_chart", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ablate.write_outputs(entries, [0], root, {"a/seed0": "x"})
    assert sorted(os.listdir(root)) == ["ablation.png", "table.json", "table.md"]
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_table_reports_mute_words_and_their_paired_difference(tmp_path):
    root = str(tmp_path)
    entries = [ablate.Entry("beta0", {}, seeds=2), ablate.Entry("expand", {}, seeds=2)]
    for name, aucs in (("beta0", (50.0, 50.0)), ("expand", (70.0, 64.0))):
        for seed, auc in enumerate(aucs):
            write_results(root, f"{name}/seed{seed}", 100.0, None)
            with open(results_path(root, f"{name}/seed{seed}")) as f:
                results = json.load(f)
            mean = {key: auc - index for index, (key, _) in enumerate(ablate.MUTE_METRICS)}
            results[ablate.MUTE_KEY] = {"mean": mean, "words": {}}
            with open(results_path(root, f"{name}/seed{seed}"), "w") as f:
                json.dump(results, f)
    table = ablate.summarise(entries, [0, 1], root)
    expand = table["rows"][1]
    assert expand[ablate.MUTE_KEY]["lexicon_auc"]["values"] == pytest.approx([70.0, 64.0])
    assert expand["paired_vs_reference"]["metrics"]["mute AUC (lexicon)"]["values"] == pytest.approx([20.0, 14.0])
    assert "| expand | 2/2 | 67.0 ± 4.2 | 66.0 ± 4.2 |" in ablate.markdown_table(table)


def test_the_table_holds_runs_another_worker_finished_while_this_one_trained(tmp_path, monkeypatch):
    root, base = str(tmp_path), make_tiny_config()
    theirs, mine = ablate.Entry("theirs", {}, seeds=1), ablate.Entry("mine", {}, seeds=1)

    def train_run(base_config, trained_entry, seed, into):
        fake_finished_run(root, theirs, 0, base_config, rsum=30.0)  # the other worker finishes meanwhile
        fake_finished_run(root, trained_entry, seed, base_config, rsum=70.0)
        return "trained", ""

    monkeypatch.setattr(ablate, "train_run", train_run)
    report = ablate.run_grid(base, [theirs, mine], [0], root, only=frozenset({"mine"}))
    assert report.trained == ["mine/seed0"]
    assert [row["seeds_finished"] for row in report.table["rows"]] == [[0], [0]]


def test_a_mute_measure_some_runs_lack_is_left_out_of_their_row_not_averaged_over_part(tmp_path):
    root = str(tmp_path)
    entries = [ablate.Entry("beta0", {}, seeds=2)]
    for seed in range(2):
        write_results(root, f"beta0/seed{seed}", 100.0, None)
        with open(results_path(root, f"beta0/seed{seed}")) as f:
            results = json.load(f)
        mean = {key: 50.0 for key, _ in ablate.MUTE_METRICS}
        if seed == 0:  # scored before the same-count AUC existed
            del mean["lexicon_auc_same_count"]
        results[ablate.MUTE_KEY] = {"mean": mean, "words": {}}
        with open(results_path(root, f"beta0/seed{seed}"), "w") as f:
            json.dump(results, f)
    row = ablate.summarise(entries, [0, 1], root)["rows"][0]
    assert "lexicon_auc_same_count" not in row[ablate.MUTE_KEY]
    assert row[ablate.MUTE_KEY]["lexicon_auc"]["values"] == [50.0, 50.0]


def test_a_rescoring_of_the_final_step_by_evaluate_supersedes_the_training_record(tmp_path):
    root = str(tmp_path)
    entries = [ablate.Entry("a", {}, seeds=1)]
    write_results(root, "a/seed0", 100.0, None)
    with open(results_path(root, "a/seed0")) as f:
        record = json.load(f)
    record["step"] = 250
    with open(results_path(root, "a/seed0"), "w") as f:
        json.dump(record, f)
    eval_dir = os.path.dirname(results_path(root, "a/seed0"))
    rescored = {**record, "scores": {"global": {**record["scores"]["global"], "rsum": 120.0}}}
    for name, rsum in (("results_step100.json", 90.0), ("results_step250_eval.batch_size=8.json", 80.0)):
        with open(os.path.join(eval_dir, name), "w") as f:  # another step; a rescoring under overrides
            json.dump({**record, "scores": {"global": {**record["scores"]["global"], "rsum": rsum}}}, f)
    row = ablate.summarise(entries, [0], root)["rows"][0]
    assert row["scores"]["global"]["rsum"]["values"] == [100.0]
    with open(os.path.join(eval_dir, "results_step250.json"), "w") as f:
        json.dump(rescored, f)
    row = ablate.summarise(entries, [0], root)["rows"][0]
    assert row["scores"]["global"]["rsum"]["values"] == [120.0]


@pytest.mark.parametrize("grid", ["cues", "cues_bce"])
def test_every_entry_of_the_cue_grids_is_a_valid_cue_world_config(grid):
    from configs import cues

    base = cues.get_config()
    entries = ablate.load_grid(os.path.join(REPO, "configs", "ablation.py"), grid)
    reference = "beta0" if grid == "cues" else "bce_beta0"
    assert reference in {entry.name for entry in entries}
    for entry in entries:
        config = ablate.entry_config(base, entry, seed=2)
        validation.validate(config, jax.device_count())
        assert config.data.world == "cues"


def test_the_cue_world_demo_config_is_the_grids_expansive_row():
    from configs import cues, cues_expansive

    row = next(
        e
        for e in ablate.load_grid(os.path.join(REPO, "configs", "ablation.py"), "cues_bce")
        if e.name == "pretrained_bce"
    )
    shipped = cues_expansive.get_config()
    shipped.seed = 0
    assert ablate.entry_config(cues.get_config(), row, seed=0).to_dict() == shipped.to_dict()
