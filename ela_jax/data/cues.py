"""The cue world: the scenes world with one mute object per scene, whose word no caption ever contains, and a cue word
that captions say exactly when it is present, so expansion is the only route from the captions to the mute word.

Each scene sets one of its five objects aside as mute (the kitchen's knife). An image holds one or two of its scene's
other objects (each from the scene with probability in_scene_probability, as in the scenes world), all of which
captions may name, plus mute objects drawn apart from everything else: its own scene's with probability
mute_in_scene, each other scene's with mute_elsewhere (at most two, the 2x2 grid's free cells; a draw with more is
redrawn, which couples the mute objects only among themselves). A caption names what the scenes world's captions name
and, for each present mute object, its cue word with probability cue_probability ("a cup in the kitchen with
cutting"): a non-visual word whose only visual correlate is the mute object's glyph. The cue clause uses stopwords
only, so the cue is the single caption word that tells the mute object apart.

The cue -> mute pairs are chosen by evidence: the frozen MiniLM teacher (ela_jax/training/teacher.py) ranks the mute
word first among the object words for the cue alone and raises it when the cue joins a caption of its scene
(tests/test_cues.py checks this against the packaged checkpoint).

The unpaired text stream (`stream_sentences`) names cue and mute words together, as real pre-training has text
without images: the only place the mute words occur in text, so an online or EMA text side can learn the link by MLM.
Everything is a pure function of (seed, split, index), or of the caller's generator for the stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ela_jax.data import scenes

# scene -> (its mute object, the cue word captions say when it is present).
CUES = {
    "beach": ("umbrella", "raining"),
    "kitchen": ("knife", "cutting"),
    "street": ("bike", "cycling"),
    "park": ("bench", "resting"),
    "farm": ("horse", "riding"),
    "office": ("phone", "calling"),
}
MUTE_WORDS = tuple(mute for mute, _ in CUES.values())
CUE_WORDS = tuple(cue for _, cue in CUES.values())
MUTE_OBJECTS = np.asarray([scenes.OBJECT_NAMES.index(mute) for mute in MUTE_WORDS], np.int64)
MUTE_SCENE = scenes.OBJECT_SCENE[MUTE_OBJECTS]
REGULAR_OBJECTS = np.setdiff1d(np.arange(len(scenes.OBJECT_NAMES)), MUTE_OBJECTS)
MAX_MUTES = 2  # the 2x2 grid's cells left beside at most two regular objects
CUE_CLAUSE = " with {}"  # stopwords around the cue: the cue is the only word a caption gains
# Unpaired sentences naming a cue and its mute word together.
STREAM_TEMPLATES = (
    "someone is {cue} with a {mute}",
    "{cue} needs a {mute}",
    "a {mute} for {cue}",
    "the {mute} is used for {cue}",
)
OBJECT_PROMPT = scenes.OBJECT_PROMPT
SPLITS = scenes.SPLITS


@dataclasses.dataclass(frozen=True)
class CuesSpec:
    seed: int = 0
    image_size: int = 32
    captions_per_image: int = 5
    min_regular: int = 1
    max_regular: int = 2
    in_scene_probability: float = 0.9
    mute_in_scene: float = 0.5  # a mute object's rate in its own scene's images
    mute_elsewhere: float = 0.1  # and in every other scene's
    cue_probability: float = 0.5  # each caption of an image with the mute object says its cue with this probability


def vocabulary_words() -> list[str]:
    """Every word a caption or a stream sentence can contain, sorted."""
    phrases = [CUE_CLAUSE, *CUE_WORDS, *STREAM_TEMPLATES]
    words = {word for phrase in phrases for word in phrase.split() if "{" not in word}
    return sorted(words | set(scenes.vocabulary_words()))


def sample_regular(rng: np.random.Generator, spec: CuesSpec, scene: int) -> list[int]:
    """Distinct regular (non-mute) object ids, each from the scene with probability in_scene_probability."""
    count = int(rng.integers(spec.min_regular, spec.max_regular + 1))
    in_scene = [o for o in REGULAR_OBJECTS if scenes.OBJECT_SCENE[o] == scene]
    elsewhere = [o for o in REGULAR_OBJECTS if scenes.OBJECT_SCENE[o] != scene]
    objects: list[int] = []
    for _ in range(count):
        pool = in_scene if rng.random() < spec.in_scene_probability else elsewhere
        objects.append(int(rng.choice([o for o in pool if o not in objects])))
    return objects


def sample_mutes(rng: np.random.Generator, spec: CuesSpec, scene: int) -> list[int]:
    """Mute object ids, each present independently of the regular objects (redrawn while more than MAX_MUTES)."""
    rates = np.where(MUTE_SCENE == scene, spec.mute_in_scene, spec.mute_elsewhere)
    while True:
        present = rng.random(len(MUTE_OBJECTS)) < rates
        if present.sum() <= MAX_MUTES:
            return [int(o) for o in MUTE_OBJECTS[present]]


def add_cues(rng: np.random.Generator, captions: list[str], mutes: list[int], probability: float) -> list[str]:
    """Each caption with the cue words of the present mute objects, each with `probability`."""
    cue_of = dict(zip(MUTE_OBJECTS.tolist(), CUE_WORDS))
    out = []
    for caption in captions:
        said = [cue_of[o] for o in mutes if rng.random() < probability]
        out.append(caption + CUE_CLAUSE.format(" and ".join(said)) if said else caption)
    return out


def generate_example(spec: CuesSpec, split: str, index: int) -> scenes.SceneExample:
    """The `index`-th example of `split`; `present` holds the regular objects, then the mute ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the cue world has {sorted(SPLITS)}")
    rng = np.random.default_rng([spec.seed, SPLITS[split], index])
    scene = int(rng.integers(len(scenes.SCENE_NAMES)))
    regular = sample_regular(rng, spec, scene)
    mutes = sample_mutes(rng, spec, scene)
    objects = regular + mutes
    image = scenes.render_image(rng, scene, objects, spec.image_size)
    captions = scenes.write_captions(rng, scene, regular, spec.captions_per_image)
    captions = add_cues(rng, captions, mutes, spec.cue_probability)
    return scenes.SceneExample(image, captions, scene, tuple(objects), scenes.named_objects(captions, objects))


def stream_sentences(rng: np.random.Generator, count: int) -> list[str]:
    """`count` unpaired sentences, each naming one cue word and its mute object's word."""
    pairs = rng.integers(len(CUES), size=count)
    templates = rng.integers(len(STREAM_TEMPLATES), size=count)
    return [STREAM_TEMPLATES[t].format(cue=CUE_WORDS[p], mute=MUTE_WORDS[p]) for p, t in zip(pairs.tolist(), templates)]
