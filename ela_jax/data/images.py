"""Robust image decoding (encoded bytes -> RGB) and the train / eval geometry (random resized crop, centre crop).

Every damaged input ends in `ImageDecodeError` with a short `reason`, which the pipelines count and skip; every
decodable image ends as 8-bit RGB with its EXIF orientation applied. Normalisation is not done here: the model
normalises uint8 images on device with `model.image.pixel_mean/std`.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# A decoded image may hold at most this many pixels; larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale (`draft`),
# larger images of other formats are skipped. PIL's own bomb guard (2 x Image.MAX_IMAGE_PIXELS) also ends in a skip.
MAX_DECODED_PIXELS = 64_000_000
DCT_FACTORS = (1, 2, 4, 8)  # the reductions libjpeg decodes directly
# Bilinear, as ViTImageProcessor resizes (the exported model documents that processor); also faster than bicubic.
RESAMPLE = Image.Resampling.BILINEAR


class ImageDecodeError(ValueError):
    """An image that cannot be used; `reason` is one of: empty, corrupt, too_large."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def open_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decodes `data` into an RGB PIL image, EXIF-rotated; JPEGs are decoded at the smallest DCT scale that keeps
    both sides >= `min_side` (a 4000-px photo headed for 224 px decodes 8x faster). Raises ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _reduce_on_decode(image, min_side)
            image.load()
            return to_rgb(_apply_exif_orientation(image))  # a mode PIL cannot convert is a ValueError here
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("too_large", str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # PIL's spellings of truncated / unreadable
        raise ImageDecodeError("corrupt", f"{type(error).__name__}: {error}") from None


def _reduce_on_decode(image: Image.Image, min_side: int | None) -> None:
    """Chooses the JPEG DCT scale (1, 1/2, 1/4, 1/8): as small as `min_side` allows, and small enough for the cap."""
    width, height = image.size
    if image.format in ("JPEG", "MPO"):  # MPO: multi-picture JPEG from cameras
        over_cap = width * height / MAX_DECODED_PIXELS
        factor = next((f for f in DCT_FACTORS if f * f >= over_cap), DCT_FACTORS[-1])
        if min_side:
            factor = max(factor, max(f for f in DCT_FACTORS if f == 1 or min(width, height) // f >= min_side))
        if factor > 1:
            image.draft(image.mode, (width // factor, height // factor))  # PIL picks scale size // request
    if image.size[0] * image.size[1] > MAX_DECODED_PIXELS:
        raise ImageDecodeError("too_large", f"{width}x{height} {image.format} over {MAX_DECODED_PIXELS} pixels")


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not cost the pixels; keep the stored orientation
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16/32-bit and float greyscale are rescaled (not clipped), alpha is composited
    on white (transparent logo backgrounds are not black), palette / CMYK / 1-bit / LA are converted."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 255.0)
        grey = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] at full resolution (subject to MAX_DECODED_PIXELS)."""
    return np.asarray(open_image(data))


def centre_crop(image: Image.Image, size: int) -> np.ndarray:
    """Evaluation geometry: the shorter side resized to `size` (the longer to int(size * longer / shorter)), then the
    centre square cut at whole pixels; uint8 [size, size, 3]. This is torchvision's Resize(size) + CenterCrop(size)
    and what the exported preprocessor_config.json asks of transformers' image processor, pixel for pixel."""
    width, height = image.size
    longer = int(size * max(width, height) / min(width, height))
    resized_size = (size, longer) if width <= height else (longer, size)
    pixels = np.asarray(image.resize(resized_size, RESAMPLE))
    top, left = (resized_size[1] - size) // 2, (resized_size[0] - size) // 2
    return np.ascontiguousarray(pixels[top : top + size, left : left + size])


def model_images(images, size: int) -> np.ndarray:
    """What a model's encode_images feeds its image tower: a PIL image, a uint8 array [H, W, 3] or [B, H, W, 3] of any
    size, or a sequence of PIL images and uint8 [H, W, 3] arrays (sizes may differ) -> uint8 [B, size, size, 3] in
    the evaluation geometry (`centre_crop`). Images already size x size pass unchanged; PIL images become RGB
    (`to_rgb`). Raises ValueError naming the first image of another kind."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype == np.uint8 and images.shape[1:] == (size, size, 3):
            return images
        items = list(images)
    elif isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        items = [images]
    else:
        items = list(images)
    batch = [_model_image(item, size, index) for index, item in enumerate(items)]
    return np.stack(batch) if batch else np.zeros((0, size, size, 3), np.uint8)


def _model_image(item, size: int, index: int) -> np.ndarray:
    if isinstance(item, Image.Image):
        return centre_crop(to_rgb(item), size)
    pixels = np.asarray(item)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"image {index} must be a PIL image or a uint8 [height, width, 3] array, got {pixels.dtype} "
            f"{pixels.shape}; decode files with PIL.Image.open and pass the images"
        )
    return pixels if pixels.shape[:2] == (size, size) else centre_crop(Image.fromarray(pixels), size)


def random_resized_crop(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = False,
) -> np.ndarray:
    """Train geometry (Inception / torchvision RandomResizedCrop): a crop of `scale` of the area and aspect `ratio`,
    resized to `size`; falls back to the centre crop after 10 misses. uint8 [size, size, 3]."""
    width, height = image.size
    area = width * height
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        crop_width, crop_height = (target_area * aspect) ** 0.5, (target_area / aspect) ** 0.5
        if crop_width <= width and crop_height <= height:
            left, top = rng.uniform(0, width - crop_width), rng.uniform(0, height - crop_height)
            box = (left, top, left + crop_width, top + crop_height)
            break
    pixels = _resize_box(image, box, size) if box else centre_crop(image, size)
    # Flip is off by default: captions say "left" and "right".
    return pixels[:, ::-1].copy() if flip and rng.random() < 0.5 else pixels


def _resize_box(image: Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    # PIL crops and resamples in one pass; reducing_gap first shrinks by whole factors (fast, no aliasing).
    return np.asarray(image.resize((size, size), RESAMPLE, box=box, reducing_gap=3.0))
