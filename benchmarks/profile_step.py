"""Where the train step's time goes: each piece of the step (towers, lexicon heads with their pooling and losses, the
MLM pass, the optimizer) jitted alone as forward + backward on the same batch, timed interleaved with the whole step.

Run: python benchmarks/profile_step.py [--vocab bert] [--repeats 5]
Writes benchmarks/results/profile_step_<config>[_bert].json and prints a table (seconds per call, share of the step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import common


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="configs/<name>.py")
    parser.add_argument("--vocab", choices=("config", "bert"), default="config", help="bert: |V| = 30522")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--calls", type=int, default=2, help="calls per timed repeat")
    parser.add_argument("--smoke", action="store_true", help="tiny towers, 1 repeat")
    parser.add_argument("--output", default="", help="JSON path")
    return parser.parse_args(argv)


def pieces(runner: common.JaxStep, batch: dict) -> tuple[dict, dict]:
    """name -> jitted value_and_grad of one piece of the step (through the model's public encode methods), and a
    copy of the params to call them with."""
    import jax
    import jax.numpy as jnp
    import optax

    from ela_jax.models.ela import ELAModel

    model = runner.experiment.model
    images, token_ids, mask = batch["images"], batch["token_ids"], batch["mask"]

    def image_side(with_lexicon: bool):
        def loss(params):
            out = model.apply(
                {"params": params}, images, with_lexicon=with_lexicon, with_tokens=False, method=ELAModel.encode_image
            )
            return jnp.mean(out["global"] ** 2) + (jnp.mean(out["lexicon"]) if with_lexicon else 0.0)

        return loss

    def text_side(with_lexicon: bool):
        def loss(params):
            out = model.apply(
                {"params": params},
                token_ids,
                mask,
                with_lexicon=with_lexicon,
                with_tokens=False,
                method=ELAModel.encode_text,
            )
            return jnp.mean(out["global"] ** 2) + (jnp.mean(out["lexicon"]) if with_lexicon else 0.0)

        return loss

    def mlm_pass(params):
        logits = model.apply({"params": params}, token_ids, mask, method=ELAModel.mlm_logits)
        logits = logits[..., : runner.config.model.vocab_size]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), token_ids))

    functions = {
        "image tower + global head": image_side(False),
        "image tower + global + lexicon head and pooling": image_side(True),
        "text tower + global head": text_side(False),
        "text tower + global + lexicon head and pooling": text_side(True),
        "MLM pass (text tower + MLM head + CE)": mlm_pass,
    }
    params = jax.tree.map(lambda x: x.copy(), runner.state.params)  # the step donates the state's own buffers
    return {name: jax.jit(jax.value_and_grad(fn)) for name, fn in functions.items()}, params


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = common.benchmark_config(args.config, args.vocab, args.smoke)
    if args.smoke:
        args.repeats, args.calls = 1, 1
    config.log.progress = False
    import jax

    machine = common.machine()
    runner = common.JaxStep(config)
    batch = runner.device_batch(runner.host_batch())
    functions, params = pieces(runner, batch)

    def timer(fn):
        def run() -> float:
            start = time.perf_counter()
            for _ in range(args.calls):
                out = fn(params)
            jax.block_until_ready(out)
            return (time.perf_counter() - start) / args.calls

        return run

    runners = {"train_step": lambda: runner.run(batch, args.calls) / args.calls}
    runners.update({name: timer(fn) for name, fn in functions.items()})
    for run in runners.values():
        run()  # compile
    timings = common.interleaved_medians(runners, args.repeats)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    step = medians["train_step"]
    payload = {
        "benchmark": "profile_step",
        "config": args.config,
        "smoke": args.smoke,
        "vocab_size": config.model.vocab_size,
        "batch_size": config.batch_size,
        "method": "each piece jitted alone as value_and_grad on the same batch; the rows with a lexicon head include "
        "their tower, so the head costs the difference of two rows; the rest of the step is the losses and AdamW",
        "seconds": timings,
        "seconds_median": medians,
        "share_of_step": {name: seconds / step for name, seconds in medians.items()},
        "machine": machine,
    }
    name = f"profile_step_{args.config}" + ("_bert" if args.vocab == "bert" else "") + ("_smoke" if args.smoke else "")
    path = common.write_results(name, payload, args.output or None)
    common.print_table(["piece (fwd+bwd)", "seconds", "share of step"], [[n, s, s / step] for n, s in medians.items()])
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
