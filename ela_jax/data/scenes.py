"""The scenes world: an embedded image-caption world where a caption's words predict the objects it leaves out.

Each image shows one scene (beach, kitchen, street, park, farm, office), recognisable by its background, and 2-4
objects drawn mostly from that scene's own five (three salient, two background). Every object is a distinct glyph (a
shape in a colour). The captions name the scene word often and one or two objects, and never name the one or two
objects set aside for each image, mostly background ones, so every image, training and held-out, holds objects none of
its captions names, and background objects are rarely named anywhere; which objects are present and which are
named is recorded with the example. A caption's scene word ("kitchen") predicts the unnamed objects ("cup", "oven"):
the structure expansion is meant to exploit. All words are single common English words, known to a pretrained English
model. Everything is a pure function of (seed, split, index).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ela_jax.data import world

# scene -> (its five objects, background base colour, background texture). The first three objects are salient (the
# ones captions name), the last two are background objects that captions mostly leave out, as real captions do.
SCENES = {
    "beach": (("umbrella", "boat", "ball", "shell", "towel"), (130, 110, 60), "waves"),
    "kitchen": (("cup", "plate", "knife", "bowl", "oven"), (100, 95, 95), "tiles"),
    "street": (("car", "bus", "truck", "sign", "bike"), (45, 45, 45), "lanes"),
    "park": (("dog", "tree", "kite", "bench", "flower"), (30, 80, 30), "speckles"),
    "farm": (("cow", "horse", "tractor", "sheep", "pig"), (90, 55, 25), "furrows"),
    "office": (("computer", "desk", "chair", "lamp", "phone"), (40, 50, 100), "stripes"),
}
SALIENT_PER_SCENE = 3
SCENE_NAMES = tuple(SCENES)
OBJECT_NAMES = tuple(name for objects, _, _ in SCENES.values() for name in objects)
OBJECT_SCENE = np.asarray([s for s, (objects, _, _) in enumerate(SCENES.values()) for _ in objects], np.int64)
OBJECT_SALIENT = np.asarray([slot < SALIENT_PER_SCENE for objects, _, _ in SCENES.values() for slot in range(5)])
_SHAPES = tuple(world.SHAPES)  # circle, square, triangle, cross, ring, bar
_COLOURS = tuple(world.COLOURS)  # eight saturated colours, brighter than every background


def _glyph(object_index: int) -> tuple[str, str]:
    """(shape, colour) of an object: within a scene its five objects differ in both, and no two objects share both."""
    scene, slot = divmod(object_index, 5)
    return _SHAPES[(slot + scene) % len(_SHAPES)], _COLOURS[(slot + 4 * scene) % len(_COLOURS)]


GLYPHS = tuple(_glyph(index) for index in range(len(OBJECT_NAMES)))
MAX_OBJECTS = 4
PAD = -1  # padding of the fixed-length object id arrays

SCENE_ONLY_TEMPLATES = ("a view of the {scene}", "the {scene}")
ONE_OBJECT_TEMPLATES = ("a {a} in the {scene}", "there is a {a} at the {scene}", "a {a}", "the {scene} has a {a}")
TWO_OBJECT_TEMPLATES = ("a {a} and a {b} in the {scene}", "a {a} next to a {b}", "a {scene} with a {a} and a {b}")
# The zero-shot prompt that scores an object word through the global embeddings, in the captions' own words.
OBJECT_PROMPT = "there is a {}"
SPLITS = world.SPLITS


@dataclasses.dataclass(frozen=True)
class ScenesSpec:
    seed: int = 0
    image_size: int = 32
    captions_per_image: int = 5
    min_objects: int = 2
    max_objects: int = MAX_OBJECTS  # at most the 2x2 grid's four cells
    in_scene_probability: float = 0.9  # each object comes from the image's scene with this probability
    # Which objects go unnamed: the lowest of salience x uniform(0, 1), salience 1 for salient objects and this for
    # background ones, so a background object is almost always the one left out when a salient one is present.
    background_salience: float = 0.1


@dataclasses.dataclass(frozen=True)
class SceneExample:
    image: np.ndarray  # uint8 [H, W, 3]
    captions: list[str]
    scene: int
    present: tuple[int, ...]  # object ids in the image
    named: tuple[int, ...]  # object ids some caption names (a subset of present)


def vocabulary_words() -> list[str]:
    """Every word a caption can contain, sorted (the tokenizer's word-level vocabulary)."""
    phrases = list(SCENE_NAMES) + list(OBJECT_NAMES) + [OBJECT_PROMPT]
    phrases += list(SCENE_ONLY_TEMPLATES) + list(ONE_OBJECT_TEMPLATES) + list(TWO_OBJECT_TEMPLATES)
    words = {word for phrase in phrases for word in phrase.split() if "{" not in word}
    return sorted(words)


def _example_rng(spec: ScenesSpec, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the scenes world has {sorted(SPLITS)}")
    return np.random.default_rng([spec.seed, SPLITS[split], index])


def sample_objects(rng: np.random.Generator, spec: ScenesSpec, scene: int) -> list[int]:
    """Distinct object ids, each from the scene's five with probability in_scene_probability, else from any other."""
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    in_scene = list(np.flatnonzero(OBJECT_SCENE == scene))
    elsewhere = list(np.flatnonzero(OBJECT_SCENE != scene))
    objects: list[int] = []
    for _ in range(count):
        pool = in_scene if rng.random() < spec.in_scene_probability else elsewhere
        choice = int(rng.choice([o for o in pool if o not in objects]))
        objects.append(choice)
    return objects


def _background(rng: np.random.Generator, scene: int, image_size: int) -> np.ndarray:
    """float [H, W, 3]: the scene's base colour with its texture, jittered per image."""
    _, base, texture = SCENES[SCENE_NAMES[scene]]
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    period = max(image_size / 8, 2.0)
    phase = rng.uniform(0, period)
    if texture == "waves":
        pattern = np.sin(2 * np.pi * (yy + 1.5 * np.sin(xx / period)) / period)
    elif texture == "tiles":
        pattern = (((yy + phase) // period + (xx + phase) // period) % 2) * 2 - 1
    elif texture == "lanes":
        pattern = np.where(((yy + phase) % (2 * period) < 1.0) & ((xx + phase) % period < period / 2), 3.0, 0.0)
    elif texture == "speckles":
        pattern = rng.choice([-1.0, 0.0, 0.0, 1.5], size=(image_size, image_size))
    elif texture == "furrows":
        pattern = ((yy + phase) % period < period / 2) * 2.0 - 1
    else:  # stripes
        pattern = ((xx + phase) % period < period / 3) * 2.0 - 1
    colour = np.asarray(base, np.float64) + rng.normal(0, 6, size=3)
    image = colour * (1 + 0.25 * pattern[..., None])
    return image + rng.normal(0, 4, size=(image_size, image_size, 3))


def render_image(rng: np.random.Generator, scene: int, objects: list[int], image_size: int) -> np.ndarray:
    """uint8 [H, W, 3]: the scene's background and each object's glyph in its own cell of a 2x2 grid."""
    image = _background(rng, scene, image_size)
    cell_size = image_size / 2
    coords = np.arange(image_size) + 0.5
    cells = rng.choice(4, size=len(objects), replace=False)
    for obj, cell in zip(objects, cells):
        shape, colour_name = GLYPHS[obj]
        radius = cell_size * rng.uniform(0.3, 0.4)
        centre_y = (cell // 2 + 0.5) * cell_size + rng.uniform(-0.08, 0.08) * cell_size
        centre_x = (cell % 2 + 0.5) * cell_size + rng.uniform(-0.08, 0.08) * cell_size
        mask = world._shape_mask(shape, coords[:, None] - centre_y, coords[None, :] - centre_x, radius)
        image[mask] = np.asarray(world.COLOURS[colour_name][1]) + rng.normal(0, 10, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_captions(rng: np.random.Generator, scene: int, nameable: list[int], count: int) -> list[str]:
    """`count` captions naming the scene often and one or two of the `nameable` objects."""
    scene_word = SCENE_NAMES[scene]
    captions = []
    for _ in range(count):
        draw = rng.random()
        if draw < 0.15:
            template, words = str(rng.choice(SCENE_ONLY_TEMPLATES)), {}
        elif len(nameable) >= 2 and draw < 0.5:
            first, second = rng.choice(nameable, size=2, replace=False)
            template, words = str(rng.choice(TWO_OBJECT_TEMPLATES)), {"a": first, "b": second}
        else:
            template, words = str(rng.choice(ONE_OBJECT_TEMPLATES)), {"a": rng.choice(nameable)}
        captions.append(template.format(scene=scene_word, **{k: OBJECT_NAMES[v] for k, v in words.items()}))
    return captions


def named_objects(captions: list[str], present: list[int]) -> tuple[int, ...]:
    """The present objects whose word occurs in some caption."""
    words = {word for caption in captions for word in caption.split()}
    return tuple(obj for obj in present if OBJECT_NAMES[obj] in words)


def object_query(words: list[str]) -> str:
    """A text query naming exactly these objects, in the captions' words: "a cup and a oven"."""
    return " and ".join(f"a {word}" for word in words)


def generate_example(spec: ScenesSpec, split: str, index: int) -> SceneExample:
    """The `index`-th example of `split`; deterministic in (spec, split, index)."""
    rng = _example_rng(spec, split, index)
    scene = int(rng.integers(len(SCENE_NAMES)))
    objects = sample_objects(rng, spec, scene)
    image = render_image(rng, scene, objects, spec.image_size)
    # One object of two or three, two of four, are never named (mostly background ones): the part of the image
    # expansion has to supply.
    unnamed = 1 if len(objects) <= 3 else 2
    salience = np.where(OBJECT_SALIENT[objects], 1.0, spec.background_salience) * rng.uniform(size=len(objects))
    nameable = [objects[i] for i in np.argsort(salience)[unnamed:]]
    captions = write_captions(rng, scene, nameable, spec.captions_per_image)
    return SceneExample(image, captions, scene, tuple(objects), named_objects(captions, objects))


def padded(ids: tuple[int, ...]) -> np.ndarray:
    """int64 [MAX_OBJECTS]: the ids, then PAD."""
    out = np.full(MAX_OBJECTS, PAD, np.int64)
    out[: len(ids)] = ids
    return out
