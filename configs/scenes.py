"""ELA on the embedded scenes world (ela_jax/data/scenes.py), sized so that a 2-core CPU trains and evaluates one run
in a minute or two: the unit of the expansion ablation (configs/ablation.py, grid `scenes`, 42 runs).

The scenes world is the one where expansion can matter: every image holds objects no caption names, and the
caption's scene word predicts them. Held-out results include `unnamed_objects` (ela_jax/evaluation/unnamed.py).

Run: python -m ela_jax.train --config configs/scenes.py --workdir /tmp/ela_scenes
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import mesh_presets  # noqa: E402
from ela_jax import config as common  # noqa: E402


def get_config(arg: str | None = None):
    """`arg`: mesh presets to overlay, e.g. `configs/scenes.py:dp` (see configs/mesh_presets.py)."""
    config = common.base_config()
    config.total_steps = 250
    config.batch_size = 64

    config.data.name = "world"
    config.data.world = "scenes"
    config.data.num_train = 3000
    config.data.num_test = 500
    config.data.image_size = 32

    config.tokenizer.vocab = "world"
    config.tokenizer.max_length = 16

    config.model = common.tiny_model(image_size=32, patch_size=4)
    # Towers trained from scratch: pool the global heads' input over tokens (a post-LN CLS state starts out nearly
    # identical for every caption).
    config.model.global_pool = "mean"
    config.model.attention_batch_splits = 8  # lets XLA:CPU keep both cores busy (see configs/demo.py)

    # Lexicon-patch alignment on the caption words only (beta = 0), in the method's soft-CE form; the ablation's rows
    # add expansion on top of this. MLM trains the text lexicon head, which the online and EMA sources expand with.
    config.objective.ela_weight = 0.3
    config.objective.ela.loss = "soft_ce"
    config.objective.ela.beta = 0.0
    config.objective.mlm_weight = 0.1
    config.objective.flops_weight = 1e-3
    config.objective.flops_warmup_steps = 100

    config.optim.lr = 1e-3
    config.optim.warmup_steps = 30
    config.optim.weight_decay = 0.05

    config.checkpoint.every_steps = 100
    config.log.every_steps = 20
    config.eval.every_steps = 0  # only at the end
    config.eval.scores = ("global", "lexicon")
    return mesh_presets.apply_overlays(config, arg)
