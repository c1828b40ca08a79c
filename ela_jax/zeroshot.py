"""python -m ela_jax.zeroshot --workdir W [--step N] [--output DIR] [--config.KEY=VALUE ...]
    -> W/eval/zeroshot_<dataset>_step<N>[_<overrides>].json (named and recorded as ela_jax.evaluate's files are)

Zero-shot classification with a checkpoint of W, configured by `eval.zeroshot`, e.g.
`--config.eval.zeroshot.dataset=world_shape` or `--config.eval.zeroshot.dataset=tfds:cifar10 --config.data.dir=D`.
"""

from __future__ import annotations

import sys

from absl import app, flags

from ela_jax import evaluate
from ela_jax.cli import parse_flags
from ela_jax.evaluation import evaluators


def main(argv) -> None:
    del argv
    experiment = evaluate.experiment_from_flags()
    zeroshot_config = experiment.config.eval.zeroshot
    try:
        evaluator = evaluators.build("zeroshot", experiment.config, experiment.tokenizer)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"zero-shot data error: {error}")
    results = evaluate.run_evaluator(
        experiment, evaluator, program="ela_jax.zeroshot", step=flags.FLAGS.step, output_dir=flags.FLAGS.output
    )
    for score, metrics in results["scores"].items():
        print(
            f"{zeroshot_config.dataset} {score}: acc1 {metrics['acc1']:.1f}  acc5 {metrics['acc5']:.1f}  "
            f"mean per-class recall {metrics['mean_per_class_recall']:.1f}  "
            f"({results['num_examples']} images, {results['num_classes']} classes, {results['skipped']} skipped)"
        )


if __name__ == "__main__":
    evaluate.define_flags(sys.argv, program="ela_jax.zeroshot")
    app.run(main, flags_parser=parse_flags)
