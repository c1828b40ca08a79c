"""python -m ela_jax.zeroshot --workdir W [--step N] [--config.KEY=VALUE ...] -> W/eval/zeroshot_<dataset>.json

Zero-shot classification with a checkpoint of W, configured by `eval.zeroshot`, e.g.
`--config.eval.zeroshot.dataset=world_shape` or `--config.eval.zeroshot.dataset=tfds:cifar10 --config.data.dir=D`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from ela_jax import evaluate
from ela_jax.cli import parse_flags


def main(argv) -> None:
    del argv
    experiment = evaluate.experiment_from_flags()
    from ela_jax.evaluation import zeroshot

    config, workdir = experiment.config, experiment.workdir
    zeroshot_config = config.eval.zeroshot
    try:
        dataset = zeroshot.labelled_set(zeroshot_config, config.data, config.model.image.image_size)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"zero-shot data error: {error}")
    templates = tuple(zeroshot_config.templates) or zeroshot.default_templates(zeroshot_config.dataset)
    state = experiment.restore_state(flags.FLAGS.step)
    encoder = experiment.encoder(state.params, config.eval.batch_size)
    results = zeroshot.evaluate_zeroshot(encoder, experiment.tokenizer, dataset, templates, config.eval)
    results = {"step": int(state.step), "dataset": zeroshot_config.dataset, "split": zeroshot_config.split, **results}
    name = evaluate.keyed_file("zeroshot", zeroshot_config.dataset, zeroshot_config.split)
    evaluate.write_on_chief(os.path.join(workdir, "eval", name), results)
    for score, metrics in results["scores"].items():
        print(
            f"{zeroshot_config.dataset} {score}: acc1 {metrics['acc1']:.1f}  acc5 {metrics['acc5']:.1f}  "
            f"mean per-class recall {metrics['mean_per_class_recall']:.1f}  "
            f"({results['num_examples']} images, {results['num_classes']} classes, {results['skipped']} skipped)"
        )


if __name__ == "__main__":
    evaluate.define_flags(sys.argv, program="ela_jax.zeroshot")
    app.run(main, flags_parser=parse_flags)
