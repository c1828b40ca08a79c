"""Export a trained ELA model to PyTorch: `O/text` (BertForMaskedLM + tokenizer), `O/image` (ViTModel + image
processor), `O/ela_heads.safetensors` and `O/ela_config.json` for `ela_jax.torch_model.ELATorch`.

This module is the command line (it restores a workdir's checkpoint); ela_jax.convert.hf_export writes the files.

Run: python -m ela_jax.convert.to_pytorch --workdir W --output O [--step N]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from ela_jax.cli import quiet_libraries
from ela_jax.convert.hf_export import (
    ELA_CONFIG_FILE,
    HEADS_FILE,
    IMAGE_DIR,
    TEXT_DIR,
    WEIGHTS_FILE,
    bert_config,
    export,
    hidden_act,
    image_processor_config,
    save_weights,
    vit_config,
    write_tokenizer,
)
from ela_jax.experiment import Experiment, load_config
from ela_jax.config import ConfigError
from ela_jax.paths import check_output, one_line_os_error, replaced_whole
from ela_jax.training.checkpoint import CheckpointError

__all__ = [
    "ELA_CONFIG_FILE",
    "HEADS_FILE",
    "IMAGE_DIR",
    "TEXT_DIR",
    "WEIGHTS_FILE",
    "bert_config",
    "export",
    "hidden_act",
    "image_processor_config",
    "save_weights",
    "vit_config",
    "write_tokenizer",
    "convert",
    "main",
]  # the library half is re-exported


def convert(workdir: str, output_dir: str, step: int | None = None) -> int:
    """Exports checkpoint `step` (latest when None) of `workdir`; returns the step exported."""
    check_output(output_dir, ELA_CONFIG_FILE)
    experiment = Experiment.build(load_config(workdir), workdir)
    state, step = experiment.restore_checkpoint(step)
    params = jax.device_get(state.params)
    with replaced_whole(output_dir, ELA_CONFIG_FILE) as staging:
        export(
            experiment.config,
            experiment.tokenizer,
            params,
            staging,
            source={"workdir": os.path.abspath(workdir), "step": int(step)},
        )
    return int(step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ela_jax.convert.to_pytorch", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json and checkpoints/)")
    parser.add_argument("--output", required=True, help="directory to write text/, image/ and the ELA heads into")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the latest)")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        step = convert(args.workdir, args.output, args.step)
    except (ConfigError, FileNotFoundError, CheckpointError) as error:
        sys.exit(f"export error: {error}")
    except OSError as error:
        sys.exit(f"export error: {one_line_os_error(error, args.output)}")
    print(
        f"exported step {step} of {args.workdir} to {args.output} "
        f"(load with ela_jax.torch_model.ELATorch.from_pretrained({args.output!r}))"
    )


if __name__ == "__main__":
    main()
