"""ELA on real image-text data (your folder, COCO, Flickr30K) with the demo's tiny towers at 224 px, patch 16, and the
bert-base-uncased WordPiece vocabulary: the starting point of ela_jax/data/README.md's examples. It runs retrieval
evaluation only (no embedded-world evaluator) and names no data: set data.name and data.manual_dir.

Run: python -m ela_jax.train --config configs/real.py --workdir W \
       --config.data.name=folder --config.data.manual_dir=/data/mine
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo, mesh_presets  # noqa: E402
from ela_jax import config as common  # noqa: E402

IMAGE_SIZE, PATCH_SIZE, MAX_LENGTH = 224, 16, 32


def get_config(arg: str | None = None):
    """`arg`: mesh presets to overlay, e.g. `configs/real.py:fsdp` (see configs/mesh_presets.py)."""
    config = demo.get_config()
    config.data.name = "folder"
    config.data.manual_dir = ""  # the command line names it; validation says so when it is missing
    config.data.image_size = IMAGE_SIZE
    # Real captions need a real vocabulary: under the world's few words most of them would be [UNK].
    config.tokenizer.vocab = "bert-base-uncased"
    config.tokenizer.max_length = MAX_LENGTH
    config.model = common.tiny_model(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, max_length=MAX_LENGTH)
    config.model.global_pool = "mean"  # towers trained from scratch, as in the demo
    # The demo's zero-shot evaluator classifies embedded-world shapes, which says nothing about real data.
    config.evals = ml_collections.ConfigDict({"retrieval": {"type": "retrieval", "during_training": True}})
    return mesh_presets.apply_overlays(config, arg)
