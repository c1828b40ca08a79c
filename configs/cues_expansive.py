"""The cue world's expansive row (configs/README.md, grid `cues_bce`): configs/cues.py with ELA's alignment as
multi-label BCE, expanded from the frozen MiniLM's four strongest words per caption at beta = 0.6.

BCE calibrates each word on its own, and its support threshold (0.02) lets a word whose label is a fraction of a
caption word's enter the image lexicon; the four-word cut keeps MiniLM's near-uniform lexicon from making every word
a target, so a mute word is one almost only when its cue is said. `python -m ela_jax.demo --world cues` trains this
and its beta = 0 twin and draws each mute word's patch map under both.

Run: python -m ela_jax.train --config configs/cues_expansive.py --workdir /tmp/ela_cues_expansive
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cues, ela_minilm  # noqa: E402


def get_config(arg: str | None = None):
    """`arg`: mesh presets to overlay, e.g. `configs/cues_expansive.py:dp` (see configs/mesh_presets.py)."""
    config = cues.get_config(arg)
    config.objective.ela.loss = "bce"
    config.objective.ela.bce_threshold = 0.02
    config.objective.ela.beta = 0.6
    config.objective.ela.target_source = "pretrained"
    config.objective.ela.teacher_dir = ela_minilm.minilm_dir()
    config.objective.ela.source_top_k = 4
    return config
