"""The demo's printed table (ela_jax.evaluation.tables): retrieval columns per (run, score), plus the zero-shot accuracy where a run has it."""

from ela_jax.evaluation import tables

METRICS = {key: float(i) for i, (key, _) in enumerate(tables.COLUMNS)}


def test_results_table_adds_zero_shot_accuracy_per_run_and_score_and_a_dash_where_there_is_none():
    results = {
        "ELA": {"scores": {"global": METRICS, "lexicon": METRICS}},
        "CLIP baseline": {"scores": {"global": METRICS}},
    }
    zeroshot = {"ELA": {"dataset": "world_shape", "scores": {"global": {"acc1": 96.64}}}}
    lines = tables.results_table(results, zeroshot).splitlines()
    assert lines[0].endswith("| RSUM | world_shape acc@1 |")
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line for line in lines[2:]}
    assert rows[("ELA", "global")].endswith("| 6.0 | 96.6 |")
    assert rows[("ELA", "lexicon")].endswith("| 6.0 | – |")
    assert rows[("CLIP baseline", "global")].endswith("| 6.0 | – |")


def test_results_table_without_zero_shot_has_only_the_retrieval_columns():
    lines = tables.results_table({"ELA": {"scores": {"global": METRICS}}}).splitlines()
    assert lines[0].endswith("| RSUM |") and len(lines) == 3
