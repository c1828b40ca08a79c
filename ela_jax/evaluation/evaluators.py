"""Evaluators chosen by config, after big_vision's evaluators/common.py: `config.evals` maps a name to an entry whose
`type` picks the class. One contract serves the training loop and the `python -m ela_jax.evaluate` / `zeroshot`
commands: an evaluator is built from the experiment's config and tokenizer (loading what it evaluates on at most
once), called with an encoder holding the params to evaluate and the step, and returns a JSON-able dict that goes to
W/eval/<its output>; `scalars` picks what the metric log and TensorBoard plot."""

from __future__ import annotations

import logging
import re
from typing import Protocol

from ela_jax.data import pipeline
from ela_jax.data.tokenizer import Tokenizer
from ela_jax.evaluation import mute_words, unnamed, zeroshot
from ela_jax.evaluation.encode import Encoder
from ela_jax.evaluation.evaluator import evaluate_retrieval


log = logging.getLogger(__name__)


class Evaluator(Protocol):
    output: str  # file name under W/eval/

    def __call__(self, encoder: Encoder, step: int) -> dict: ...

    def scalars(self, results: dict) -> dict[str, float]: ...


def eval_scalars(results: dict) -> dict[str, float]:
    """The curves worth plotting from a retrieval evaluation's results: recall@K and RSUM per score."""
    return {
        f"eval/{score}/{name}": value
        for score, metrics in results["scores"].items()
        for name, value in metrics.items()
        if "recall@" in name or name == "rsum"
    }


class RetrievalEvaluator:
    """Held-out image-text retrieval, R@K both ways per score (and the unnamed-object measure where the data has
    object annotations, the mute-word measure on the cue world) -> eval/results.json."""

    output = "results.json"

    def __init__(self, config, tokenizer: Tokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.dataset = None  # read at the first call: the loop prepares its training data first
        self.unnamed = unnamed.UnnamedObjects(config.data, config.eval) if unnamed.applies(config.data) else None
        self.mute_words = mute_words.MuteWords(config.data) if mute_words.applies(config.data) else None
        self.available = pipeline.has_test_split(config.data)
        if not self.available:
            log.warning(
                "%s holds no test.jsonl / test.csv: this run is not evaluated (eval/results.json lists no scores); "
                "add one or set data.eval_name",
                config.data.manual_dir,
            )

    def __call__(self, encoder: Encoder, step: int) -> dict:
        if not self.available:
            return {"step": int(step), "split": "test", "scores": {}}
        if self.dataset is None:
            self.dataset = pipeline.retrieval_set(self.config.data, "test")
        results = evaluate_retrieval(encoder, self.tokenizer, self.dataset, self.config.eval)
        if self.unnamed is not None:
            results["unnamed_objects"] = self.unnamed(encoder, self.tokenizer)
        if self.mute_words is not None:
            results["mute_words"] = self.mute_words(encoder, self.tokenizer)
        return {"step": int(step), "split": "test", **results}

    def scalars(self, results: dict) -> dict[str, float]:
        return eval_scalars(results)


class ZeroShotEvaluator:
    """Zero-shot classification configured by `eval.zeroshot` -> eval/zeroshot_<dataset>.json. The labelled set is read when
    the evaluator is built, so a missing dataset stops a run before it trains (FileNotFoundError / ValueError)."""

    def __init__(self, config, tokenizer: Tokenizer):
        self.config, self.tokenizer = config, tokenizer
        settings = config.eval.zeroshot
        self.output = keyed_file("zeroshot", settings.dataset, settings.split)
        self.dataset = zeroshot.labelled_set(settings, config.data, config.model.image.image_size)
        self.templates = tuple(settings.templates) or zeroshot.default_templates(settings.dataset)

    def __call__(self, encoder: Encoder, step: int) -> dict:
        settings = self.config.eval.zeroshot
        results = zeroshot.evaluate_zeroshot(encoder, self.tokenizer, self.dataset, self.templates, self.config.eval)
        return {"step": int(step), "dataset": settings.dataset, "split": settings.split, **results}

    def scalars(self, results: dict) -> dict[str, float]:
        return {
            f"eval/zeroshot/{score}/{name}": value
            for score, metrics in results["scores"].items()
            for name, value in metrics.items()
            if name in ("acc1", "acc5")
        }


TYPES = {"retrieval": RetrievalEvaluator, "zeroshot": ZeroShotEvaluator}


def build(evaluator_type: str, config, tokenizer: Tokenizer) -> Evaluator:
    """An evaluator of a type named in config.EVALUATOR_TYPES (validation refuses any other)."""
    return TYPES[evaluator_type](config, tokenizer)


def during_training(config, tokenizer: Tokenizer) -> dict[str, Evaluator]:
    """The evaluators of `config.evals` that the training loop runs, by name."""
    return {name: build(entry.type, config, tokenizer) for name, entry in config.evals.items() if entry.during_training}


def keyed_file(prefix: str, dataset: str, split: str = "test") -> str:
    """`<prefix>_<dataset>[_<split>].json`: one file per dataset (and non-test split), so evaluations on several
    datasets sit side by side instead of overwriting each other."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", dataset).strip("_")
    return f"{prefix}_{slug}.json" if split == "test" else f"{prefix}_{slug}_{split}.json"
