"""ELA on the cue world (ela_jax/data/cues.py): the scenes world with a mute object per scene, whose word no caption
ever contains, and a cue word captions say when it is present. Sized like configs/scenes.py.

Only expansion can teach the image lexicon a mute word, so the mute-word presence measure (`mute_words` in
eval/results.json, ela_jax/evaluation/mute_words.py) shows information augmentation directly. This base is beta = 0
(caption words only: expect a mute-word AUC near 50); expansive rows set objective.ela.beta and the source. The
unpaired text stream (sentences naming cue and mute words together) is on, trained by its own MLM term, so the online
and EMA sources can learn cue -> mute word; the pretrained MiniLM knows the pairs already.

The expansive row that teaches the mute words best (grid `cues_bce`, configs/README.md) is configs/cues_expansive.py.

Run: python -m ela_jax.train --config configs/cues.py --workdir /tmp/ela_cues
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import scenes  # noqa: E402


def get_config(arg: str | None = None):
    """`arg`: mesh presets to overlay, e.g. `configs/cues.py:dp` (see configs/mesh_presets.py)."""
    config = scenes.get_config(arg)
    config.data.world = "cues"
    config.data.text_stream.batch_size = 32
    config.objective.stream_mlm_weight = 0.1
    return config
