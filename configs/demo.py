"""ELA on the embedded shapes world, sized for a 2-core CPU (a few minutes of training).

Run: python -m ela_jax.train --config configs/demo.py --workdir /tmp/ela_demo
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import mesh_presets  # noqa: E402
from ela_jax import config as common  # noqa: E402


def get_config(arg: str | None = None):
    """`arg`: mesh presets to overlay, e.g. `configs/demo.py:fsdp_tp` (see configs/mesh_presets.py)."""
    config = common.base_config()
    config.total_steps = 1000
    config.batch_size = 128

    config.data.name = "world"
    config.data.num_train = 6000
    config.data.num_test = 1000
    # 48-px pictures cut into 12-px patches: 16 patches, each wider than a small shape's stroke and covering part of
    # its outline. Fewer, larger patches make a step cheap enough for 1000 steps, and shapes were learned only with
    # that many (configs/README.md).
    config.data.image_size = 48

    config.tokenizer.vocab = "world"
    config.tokenizer.max_length = 16

    config.model = common.tiny_model(image_size=48, patch_size=12)
    # Towers trained from scratch: pool the global heads' input over tokens (a post-LN CLS state starts out nearly
    # identical for every caption, and CLIP-only training then sat at chance for hundreds of steps).
    config.model.global_pool = "mean"
    # This config runs on CPUs: attention over 8 slices of the batch lets XLA:CPU keep both cores busy (same
    # results). On a mesh that splits the batch (a preset, hand-set mesh sizes, several processes) the experiment
    # switches it off (ela_jax.experiment.model_config_for_mesh).
    config.model.attention_batch_splits = 8

    # Lexicon-patch alignment on the caption words (beta = 0) in its in-batch contrastive form. Expansion does not
    # pay on this world, whose objects are drawn independently: a caption's words cannot predict the objects it
    # leaves out (the demo grid in configs/README.md). The weights are the best of a small search.
    config.objective.ela_weight = 0.3
    config.objective.ela.loss = "lex_contrastive"
    config.objective.ela.beta = 0.0
    # MLM keeps the text lexicon head calibrated, so `lexicon` (sparse) retrieval scores mean something.
    config.objective.mlm_weight = 0.1
    config.objective.flops_weight = 1e-3
    config.objective.flops_warmup_steps = 150

    config.optim.lr = 1e-3
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 0.05

    config.checkpoint.every_steps = 250
    config.log.every_steps = 50
    config.eval.every_steps = 0  # only at the end
    config.eval.scores = ("global", "lexicon")
    # Zero-shot shape recognition after training: the colour of a shape is easy to learn, its outline is not.
    config.eval.zeroshot.dataset = "world_shape"
    config.evals.zeroshot.during_training = True
    return mesh_presets.apply_overlays(config, arg)
