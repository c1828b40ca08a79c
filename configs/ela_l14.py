"""ELA at ViT-L/14 + BERT-base: `configs/ela_b16.py` with the larger image tower (about 300M image parameters).

Run: python -m ela_jax.train --config configs/ela_l14.py:fsdp_tp --workdir W --config.data.manual_dir=... \
       --config.data.eval_manual_dir=/data/coco
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import ela_b16, mesh_presets  # noqa: E402
from ela_jax import config as common  # noqa: E402


def get_config(arg: str | None = None):
    config = ela_b16.get_config()
    model = common.l14_model()
    for key in ("dtype", "global_pool", "vocab_multiple", "remat", "remat_policy", "scan_layers"):
        model[key] = config.model[key]
    model.lexicon.chunk = config.model.lexicon.chunk
    config.model = model
    return mesh_presets.apply_overlays(config, arg)
