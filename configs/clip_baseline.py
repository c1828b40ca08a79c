"""The CLIP baseline: the demo's towers, data and schedule with only the global InfoNCE loss.

Run: python -m ela_jax.train --config configs/clip_baseline.py --workdir /tmp/clip_demo
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo  # noqa: E402


def get_config(arg: str | None = None):
    config = demo.get_config(arg)
    config.objective.ela_weight = 0.0
    config.objective.mlm_weight = 0.0
    config.objective.flops_weight = 0.0
    config.eval.scores = ("global",)
    config.eval.zeroshot.scores = ("global",)
    return config
