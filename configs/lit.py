"""LiT-style locked-image tuning: a pretrained ViT-B/16 image tower that stays frozen, a BERT text tower and the
heads trained on image-text shards against it (Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text
Tuning"). The image tower and its optimizer state cost no update and no memory for Adam's moments; only the text
side, the projections and the lexicon heads train.

Run (the image tower's Hugging Face directory is required: a frozen random tower would teach nothing):
  python -m ela_jax.train --config configs/lit.py:fsdp --workdir W \
    --config.init.image_tower=/models/vit-base-patch16-224 --config.init.text_tower=/models/bert-base-uncased \
    --config.data.manual_dir=/data/cc3m_shards --config.data.eval_manual_dir=/data/coco
Add --config.objective.global_loss=sigmoid for SigLIP's loss (SigLiT).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import ela_b16  # noqa: E402


def get_config(arg: str | None = None):
    """`arg`: mesh presets to overlay, e.g. `configs/lit.py:fsdp_tp` (see configs/mesh_presets.py)."""
    config = ela_b16.get_config(arg)
    # Locked image tower: no update, no optimizer state, no weight decay. The image heads (global and token
    # projections, lexicon head) stay trainable: they map the locked features into the shared spaces.
    config.optim.frozen = ("image_tower/.*",)
    # The pretrained text tower moves ten times slower than the freshly initialised heads.
    config.optim.lr_multipliers = (("text_tower/.*", 0.1),)
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 5_000
    config.optim.weight_decay = 1e-4  # LiT's; the locked tower gets none in any case
    return config
