"""Lexicon-patch heatmaps: for an image and a caption, which patches fire for each of the image's top lexicon words
(caption words marked apart from expanded ones), with the chosen (argmax) patch outlined.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ela_jax.data.tokenizer import Tokenizer  # noqa: E402
from ela_jax.models.ela import ELAModel  # noqa: E402

CAPTION_COLOUR = "#1a7f37"  # green: the word is in the caption
EXPANDED_COLOUR = "#c2410c"  # orange: the image expanded to a word the caption does not use
PANEL_COLUMNS = 5
PANEL_INCHES = 2.6


@dataclasses.dataclass
class WordMap:
    """One lexicon word of an image: its weight log(1 + max_k ReLU(z_k)) and where it fires."""

    word: str
    token_id: int
    weight: float
    in_caption: bool
    patch_activation: np.ndarray  # float32 [grid, grid]: ReLU(z_k[word]) of each patch, row-major like the patches
    best_patch: tuple[int, int]  # (row, col) of the patch with the largest logit: the patch the word chose


def encode_patches(model: ELAModel, params, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 [B, H, W, 3] -> patch vocabulary logits float32 [B, patches, vocab] and lexicon [B, vocab]."""
    image_config = model.config.image
    expected = (image_config.image_size, image_config.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"images must be [batch, {expected[0]}, {expected[1]}, 3] for this model, got {images.shape}")
    encode = jax.jit(
        functools.partial(model.apply, with_tokens=False, with_patch_logits=True, method=ELAModel.encode_image)
    )
    outputs = encode({"params": params}, np.asarray(images, np.uint8))
    return np.asarray(jax.device_get(outputs["vocab_logits"])), np.asarray(jax.device_get(outputs["lexicon"]))


def lexicon_patch_maps(
    vocab_logits: np.ndarray, lexicon: np.ndarray, tokenizer: Tokenizer, caption: str, num_words: int = 8
) -> list[WordMap]:
    """One image's `num_words` heaviest lexicon words (special tokens skipped), heaviest first.

    vocab_logits [patches, vocab] over a square, row-major patch grid; lexicon [vocab]. The caption only decides which
    words count as caption words.
    """
    grid = math.isqrt(vocab_logits.shape[0])
    if grid * grid != vocab_logits.shape[0]:
        raise ValueError(f"{vocab_logits.shape[0]} patches do not form a square grid; expected [grid * grid, vocab]")
    special = set(tokenizer.special_ids)
    ranking = np.argsort(-lexicon, kind="stable")
    top_ids = [int(i) for i in ranking if int(i) not in special][:num_words]
    token_ids, mask = tokenizer.encode([caption])
    caption_ids = set(token_ids[0][mask[0]].tolist()) - special
    return [word_patch_map(vocab_logits, lexicon, tokenizer, token_id, token_id in caption_ids) for token_id in top_ids]


def word_patch_map(
    vocab_logits: np.ndarray, lexicon: np.ndarray, tokenizer: Tokenizer, token_id: int, in_caption: bool
) -> WordMap:
    """One word's map from an image's vocab_logits [patches, vocab] (square, row-major grid) and lexicon [vocab]."""
    grid = math.isqrt(vocab_logits.shape[0])
    logits = vocab_logits[:, token_id]  # [patches]
    return WordMap(
        word=tokenizer.id_to_token(token_id),
        token_id=token_id,
        weight=float(lexicon[token_id]),
        in_caption=in_caption,
        patch_activation=np.maximum(logits, 0.0).reshape(grid, grid).astype(np.float32),
        best_patch=divmod(int(np.argmax(logits)), grid),
    )


def draw_word_map(axis, image: np.ndarray, word_map: WordMap) -> float:
    """The image with the word's patch activations over it and its chosen patch outlined; returns the peak."""
    size = image.shape[0]
    grid = word_map.patch_activation.shape[0]
    patch = size / grid
    # imshow with nearest interpolation upscales the tiny world images without blurring their pixels.
    extent = (0, size, size, 0)
    axis.imshow(image, interpolation="nearest", extent=extent)
    peak = float(word_map.patch_activation.max())
    if peak > 0:
        axis.imshow(
            word_map.patch_activation,
            cmap="inferno",
            alpha=0.6,
            vmin=0.0,
            vmax=peak,
            interpolation="nearest",
            extent=extent,
        )
        row, col = word_map.best_patch
        axis.add_patch(Rectangle((col * patch, row * patch), patch, patch, fill=False, edgecolor="cyan", linewidth=2.5))
    return peak


def plot_word_comparison(
    image: np.ndarray, captions: list[str], word_maps: dict[str, WordMap], output_path: str, title: str
) -> str:
    """One PNG: the image, then one word's map under each run (`word_maps`: run label -> its map of the same word),
    with the image's captions listed, so a reader sees which run puts the word on the image without any caption
    naming it."""
    figure, axes = plt.subplots(1, 1 + len(word_maps), figsize=((1 + len(word_maps)) * PANEL_INCHES * 1.2, 5.0))
    for axis in axes:
        axis.set_axis_off()
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("held-out image", fontsize=10)
    for axis, (label, word_map) in zip(axes[1:], word_maps.items()):
        peak = draw_word_map(axis, image, word_map)
        state = f"a_I = {word_map.weight:.2f}" if word_map.weight > 0 else "a_I = 0: not in the lexicon"
        axis.set_title(f"{label}\n'{word_map.word}': {state}" + ("" if peak > 0 else "\n(no patch fires)"), fontsize=9)
    listing = "\n".join(f'"{caption}"' for caption in captions)
    figure.suptitle(title, fontsize=10)
    figure.text(0.5, 0.01, f"captions of this image:\n{listing}", ha="center", va="bottom", fontsize=8)
    figure.tight_layout(rect=(0, 0.22, 1, 0.95))  # room below the panels for the captions
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    figure.savefig(output_path, dpi=100)
    plt.close(figure)
    return output_path


def plot_heatmap(image: np.ndarray, caption: str, word_maps: list[WordMap], output_path: str) -> str:
    """One PNG: the image with its patch grid, one panel per word (patch activations over the image, chosen patch
    outlined, title green* for caption words and orange for expanded ones), and the word list with weights."""
    size = image.shape[0]
    grid = word_maps[0].patch_activation.shape[0] if word_maps else 1
    patch = size / grid
    cells = len(word_maps) + 2
    rows = -(-cells // PANEL_COLUMNS)
    figure, axes = plt.subplots(
        rows, PANEL_COLUMNS, figsize=(PANEL_COLUMNS * PANEL_INCHES, rows * PANEL_INCHES + 0.6), squeeze=False
    )
    axes = axes.ravel()
    for axis in axes:
        axis.set_axis_off()
    # imshow with nearest interpolation upscales the tiny world images without blurring their pixels.
    extent = (0, size, size, 0)
    axes[0].imshow(image, interpolation="nearest", extent=extent)
    for line in np.arange(1, grid) * patch:
        axes[0].axhline(line, color="white", linewidth=0.5, alpha=0.6)
        axes[0].axvline(line, color="white", linewidth=0.5, alpha=0.6)
    axes[0].set_title("image and its patches", fontsize=10)
    for axis, word_map in zip(axes[1:], word_maps):
        peak = draw_word_map(axis, image, word_map)
        marker = "*" if word_map.in_caption else ""
        axis.set_title(
            f"{word_map.word}{marker}  {word_map.weight:.2f}" + ("" if peak > 0 else " (no patch fires)"),
            fontsize=11,
            fontweight="bold",
            color=CAPTION_COLOUR if word_map.in_caption else EXPANDED_COLOUR,
        )
    listing = axes[len(word_maps) + 1]
    listing.set_title("top lexicon words", fontsize=10)
    for index, word_map in enumerate(word_maps):
        listing.text(
            0.02,
            0.92 - index * 0.9 / max(len(word_maps), 1),
            f"{word_map.weight:5.2f}  {word_map.word}{'*' if word_map.in_caption else ''}",
            transform=listing.transAxes,
            fontsize=10,
            family="monospace",
            va="top",
            color=CAPTION_COLOUR if word_map.in_caption else EXPANDED_COLOUR,
        )
    figure.suptitle(
        f'caption: "{caption}"\n* green = caption word, orange = expanded word; cyan box = the patch the word chose',
        fontsize=10,
    )
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    figure.savefig(output_path, dpi=100)
    plt.close(figure)
    return output_path
