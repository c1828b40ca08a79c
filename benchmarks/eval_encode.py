"""Evaluation encoding throughput: images/s and captions/s of `ela_jax.evaluation.encode.Encoder` (the jitted,
chunked encoders evaluation and `ela_jax.load` use), global and lexicon vectors, host transfer included.

Run: python benchmarks/eval_encode.py [--config demo] [--vocab bert] [--images 1000] [--captions 5000]
     python benchmarks/eval_encode.py --config ela_b16     # accelerators; bf16 ViT-B/16 + BERT-base
Writes benchmarks/results/eval_encode_<config>[_bert].json (or --output) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


import common


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="configs/<name>.py (ela_b16: ViT-B/16 + BERT-base, bf16)")
    parser.add_argument("--vocab", choices=("config", "bert"), default="config", help="bert: |V| = 30522")
    parser.add_argument("--images", type=int, default=1000, help="images per timed pass (Flickr30K 1K test size)")
    parser.add_argument("--captions", type=int, default=5000, help="captions per timed pass")
    parser.add_argument("--batch_size", type=int, default=0, help="encoder chunk size; 0: the config's eval one")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the median is reported)")
    parser.add_argument("--smoke", action="store_true", help="tiny towers, few items: checks the code path")
    parser.add_argument("--output", default="", help="JSON path (default benchmarks/results/eval_encode_<...>.json)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = common.benchmark_config(args.config, args.vocab, args.smoke)
    if args.smoke:
        args.images, args.captions, args.repeats = 16, 32, 1
        config.eval.batch_size = 8
    import jax

    if args.config == "ela_b16" and jax.default_backend() == "cpu" and not args.smoke:
        sys.exit("eval_encode: --config ela_b16 is an accelerator measurement; use --smoke to check the code path")
    if args.batch_size:
        config.eval.batch_size = args.batch_size
    from ela_jax.experiment import Experiment

    machine = common.machine()
    experiment = Experiment.build(config, common.tempfile.mkdtemp(prefix="ela_bench_"))
    config = experiment.config
    params = experiment.state_factory().create(config.seed).params
    encoder = experiment.encoder(params, config.eval.batch_size)
    images = common.world_batch(config, experiment.tokenizer, args.images)["images"]
    captions = common.world_batch(config, experiment.tokenizer, args.captions)
    token_ids, mask = captions["token_ids"], captions["mask"]

    def timed(fn) -> tuple[float, list[float]]:
        start = time.perf_counter()
        fn()  # compiles
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return first, times

    image_first, image_times = timed(lambda: encoder.encode_images(images))
    text_first, text_times = timed(lambda: encoder.encode_tokens(token_ids, mask))
    images_per_second = args.images / statistics.median(image_times)
    captions_per_second = args.captions / statistics.median(text_times)
    payload = {
        "benchmark": "eval_encode",
        "config": args.config,
        "smoke": args.smoke,
        "vocab_size": config.model.vocab_size,
        "dtype": config.model.dtype,
        "encoder_batch_size": encoder.batch_size,
        "images": args.images,
        "captions": args.captions,
        "image_seconds": image_times,
        "caption_seconds": text_times,
        "first_pass_seconds": {"images": image_first, "captions": text_first},
        "images_per_second": images_per_second,
        "captions_per_second": captions_per_second,
        "machine": machine,
    }
    name = f"eval_encode_{args.config}" + ("_bert" if args.vocab == "bert" else "") + ("_smoke" if args.smoke else "")
    path = common.write_results(name, payload, args.output or None)
    common.print_table(
        ["config", "|V|", "chunk", "images/s", "captions/s"],
        [[args.config, config.model.vocab_size, encoder.batch_size, images_per_second, captions_per_second]],
    )
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
