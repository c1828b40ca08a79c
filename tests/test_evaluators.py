"""Evaluators chosen by config: the types a config may name, and zero-shot classification run by the training loop."""

from __future__ import annotations

import json
import os

import pytest

from ela_jax import config as config_lib
from ela_jax import validation
from ela_jax.evaluation import evaluators
from ela_jax.training import loop
from tests.helpers import make_tiny_config


def test_every_type_a_config_may_name_has_an_evaluator():
    assert sorted(evaluators.TYPES) == sorted(config_lib.EVALUATOR_TYPES)


def test_an_unknown_evaluator_type_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="evals.retrieval.type='ranking' is not one of"):
        validation.validate(make_tiny_config(**{"evals.retrieval.type": "ranking"}), num_devices=1)


def test_keeping_the_best_checkpoint_needs_retrieval_during_training():
    config = make_tiny_config(**{"checkpoint.best_metric": "global/rsum", "evals.retrieval.during_training": False})
    with pytest.raises(config_lib.ConfigError, match="set evals.retrieval.during_training=True"):
        validation.validate(config, num_devices=1)


def test_the_loop_runs_only_the_evaluators_config_asks_for():
    config = make_tiny_config()
    assert sorted(evaluators.during_training(config, tokenizer=None)) == ["retrieval"]


@pytest.mark.integration  # trains
def test_zero_shot_runs_during_training_when_the_config_asks(tmp_path):
    workdir = str(tmp_path)
    config = make_tiny_config(
        **{
            "total_steps": 4,
            "eval.every_steps": 2,
            "checkpoint.every_steps": 0,
            "log.every_steps": 2,
            "evals.zeroshot.during_training": True,
            "eval.zeroshot.num_examples": 16,
        }
    )
    results = loop.train(config, workdir)
    with open(os.path.join(workdir, "eval", "zeroshot_world_colour.json")) as f:
        zeroshot = json.load(f)
    assert zeroshot["step"] == 4 and zeroshot["num_examples"] == 16
    assert set(zeroshot["scores"]) == set(config.eval.zeroshot.scores)
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(zeroshot["scores"]["global"])
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        assert json.load(f) == json.loads(json.dumps(results))  # retrieval still writes results.json, as returned
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    at_step_2 = {key for line in logged if line["step"] == 2 for key in line}
    assert {"eval/zeroshot/global/acc1", "eval/global/rsum"} <= at_step_2
