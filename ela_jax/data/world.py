"""The embedded dataset: a procedural image-caption world that needs object matching.

Each image holds 2-3 coloured shapes in distinct cells of a 2x2 grid; each of its 5 captions names only one or two
of them (the information asymmetry ELA targets) and draws colour, shape, size and place words from synonym sets, so
the words a caption uses are not the only right words for the image; some captions leave the colour out. Everything is a pure function of
(seed, split, index): the same config always yields the same world.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Each attribute value has synonyms; captions pick one at random, so "crimson disc" and "red circle" name the same
# object.  The first word of each list is the canonical name.
COLOURS = {
    "red": (["red", "crimson", "scarlet"], (220, 30, 30)),
    "green": (["green", "emerald", "lime"], (40, 190, 50)),
    "blue": (["blue", "navy", "azure"], (40, 70, 230)),
    "yellow": (["yellow", "golden", "lemon"], (235, 220, 40)),
    "purple": (["purple", "violet", "lilac"], (150, 50, 200)),
    "orange": (["orange", "amber", "tangerine"], (245, 140, 20)),
    "white": (["white", "ivory", "snowy"], (245, 245, 245)),
    "cyan": (["cyan", "teal", "turquoise"], (30, 210, 210)),
}
SHAPES = {
    "circle": ["circle", "disc", "dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "cross": ["cross", "plus", "x"],
    "ring": ["ring", "donut", "hoop"],
    "bar": ["bar", "stripe", "stick"],
}
SIZES = {"small": ["small", "tiny", "little"], "big": ["big", "large", "huge"]}
# Grid cells (row, col) -> place phrases. Two by two: a shape then fills enough of a demo image that its outline
# spans several patches, where shapes differ; on a finer grid the small shapes were a patch or two of colour.
PLACES = {
    (0, 0): ["top left", "upper left"],
    (0, 1): ["top right", "upper right"],
    (1, 0): ["bottom left", "lower left"],
    (1, 1): ["bottom right", "lower right"],
}
GRID = 2
# Shape radius as a fraction of the cell's side; strokes (cross, ring, bar) a fraction of the radius. Large enough
# that a shape's outline, not only its colour, differs between the patches it covers.
RADII = {"small": 0.32, "big": 0.46}
ONE_OBJECT_TEMPLATES = (
    "a {size} {colour} {shape}",
    "a {colour} {shape} at the {place}",
    "there is a {colour} {shape} in the {place}",
    "{size} {colour} {shape} on the {place}",
    "the picture shows a {colour} {shape}",
    # Captions without a colour word: colour and place alone then do not match them, so the towers must learn shape.
    "a {size} {shape} at the {place}",
    "there is a {shape} in the {place}",
    "the picture shows a {shape}",
)
TWO_OBJECT_TEMPLATES = (
    "a {colour} {shape} and a {colour2} {shape2}",
    "a {size} {colour} {shape} next to a {colour2} {shape2}",
    "there is a {colour} {shape} with a {size2} {colour2} {shape2}",
)
SPLITS = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    image_size: int = 32
    min_objects: int = 2
    max_objects: int = 3
    captions_per_image: int = 5


def vocabulary_words() -> list[str]:
    """Every word a caption can contain, sorted (the demo's WordPiece vocabulary is built from these)."""
    phrases = [w for synonyms, _ in COLOURS.values() for w in synonyms]
    phrases += [w for synonyms in SHAPES.values() for w in synonyms]
    phrases += [w for synonyms in SIZES.values() for w in synonyms]
    phrases += [w for synonyms in PLACES.values() for w in synonyms]
    phrases += list(ONE_OBJECT_TEMPLATES) + list(TWO_OBJECT_TEMPLATES)
    words = {word for phrase in phrases for word in phrase.split() if not word.startswith("{")}
    return sorted(words)


def _example_rng(spec: WorldSpec, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the embedded world has {sorted(SPLITS)}")
    return np.random.default_rng([spec.seed, SPLITS[split], index])


def sample_objects(rng: np.random.Generator, spec: WorldSpec) -> list[WorldObject]:
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    cells = rng.choice(GRID * GRID, size=count, replace=False)
    return [
        WorldObject(
            shape=str(rng.choice(list(SHAPES))),
            colour=str(rng.choice(list(COLOURS))),
            size=str(rng.choice(list(SIZES))),
            cell=(int(cell) // GRID, int(cell) % GRID),
        )
        for cell in cells
    ]


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, radius: float) -> np.ndarray:
    ay, ax = np.abs(yy), np.abs(xx)
    distance = np.sqrt(yy**2 + xx**2)
    thickness = max(1.5, radius / 2.5)
    if shape == "circle":
        return distance <= radius
    if shape == "square":
        return (ay <= radius * 0.85) & (ax <= radius * 0.85)
    if shape == "triangle":
        # Apex up: rows widen linearly from the apex to the base.
        return (yy <= radius * 0.8) & (yy >= -radius) & (ax <= (yy + radius) * 0.55)
    if shape == "cross":
        return ((ay <= thickness) & (ax <= radius)) | ((ax <= thickness) & (ay <= radius))
    if shape == "ring":
        return (distance <= radius) & (distance >= radius - thickness - 0.5)
    if shape == "bar":
        return (ay <= thickness) & (ax <= radius)
    raise ValueError(f"unknown shape {shape!r}")


def render_image(rng: np.random.Generator, objects: list[WorldObject], image_size: int) -> np.ndarray:
    """uint8 [image_size, image_size, 3]: textured dark background plus the objects, jittered in place and colour."""
    background = rng.integers(10, 70, size=3)
    image = background + rng.normal(0, 8, size=(image_size, image_size, 3))
    cell_size = image_size / GRID
    coords = np.arange(image_size) + 0.5
    for obj in objects:
        radius = cell_size * RADII[obj.size]
        centre_y = (obj.cell[0] + 0.5) * cell_size + rng.uniform(-0.12, 0.12) * cell_size
        centre_x = (obj.cell[1] + 0.5) * cell_size + rng.uniform(-0.12, 0.12) * cell_size
        mask = _shape_mask(obj.shape, coords[:, None] - centre_y, coords[None, :] - centre_x, radius)
        colour = np.asarray(COLOURS[obj.colour][1]) + rng.normal(0, 12, size=3)
        image[mask] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


def _describe(rng: np.random.Generator, obj: WorldObject, suffix: str = "") -> dict[str, str]:
    return {
        f"colour{suffix}": str(rng.choice(COLOURS[obj.colour][0])),
        f"shape{suffix}": str(rng.choice(SHAPES[obj.shape])),
        f"size{suffix}": str(rng.choice(SIZES[obj.size])),
        f"place{suffix}": str(rng.choice(PLACES[obj.cell])),
    }


def write_captions(rng: np.random.Generator, objects: list[WorldObject], count: int) -> list[str]:
    """`count` captions, each naming one or two of the objects with randomly chosen synonyms."""
    captions = []
    for _ in range(count):
        if len(objects) >= 2 and rng.random() < 0.4:
            first, second = rng.choice(len(objects), size=2, replace=False)
            words = {**_describe(rng, objects[first]), **_describe(rng, objects[second], "2")}
            template = str(rng.choice(TWO_OBJECT_TEMPLATES))
        else:
            words = _describe(rng, objects[int(rng.integers(len(objects)))])
            template = str(rng.choice(ONE_OBJECT_TEMPLATES))
        captions.append(template.format(**words))
    return captions


def generate_example(spec: WorldSpec, split: str, index: int) -> tuple[np.ndarray, list[str]]:
    """The `index`-th (image uint8 [H, W, 3], captions) pair of `split`; deterministic in (spec, split, index)."""
    rng = _example_rng(spec, split, index)
    objects = sample_objects(rng, spec)
    image = render_image(rng, objects, spec.image_size)
    return image, write_captions(rng, objects, spec.captions_per_image)
