"""Position embeddings of a pretrained image tower resized to another patch grid, in numpy, with the weights of
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` that the towers' own `interpolate_pos_encoding`
uses: plain (a = -0.75, edge pixels repeated) or `antialias=True` (PIL's filter, a = -0.5, widened when shrinking).
"""

from __future__ import annotations

import numpy as np


def _cubic(distance: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at |distance| (0 beyond 2)."""
    x = np.abs(distance)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's bicubic resize (align_corners False, no antialias) along one axis."""
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(source)
    matrix = np.zeros((out_size, in_size))
    for offset in (-1, 0, 1, 2):
        index = np.clip(floor + offset, 0, in_size - 1).astype(int)
        np.add.at(matrix, (np.arange(out_size), index), _cubic(source - (floor + offset), -0.75))
    return matrix


def antialiased_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's bicubic resize with antialias=True along one axis (PIL's resampling filter)."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    matrix = np.zeros((out_size, in_size))
    for row in range(out_size):
        center = scale * (row + 0.5)
        start = max(int(center - 2 * stretch + 0.5), 0)
        stop = min(int(center + 2 * stretch + 0.5), in_size)
        taps = np.arange(start, stop)
        weights = _cubic((taps - center + 0.5) / stretch, -0.5)
        matrix[row, start:stop] = weights / weights.sum()
    return matrix


def resize_positions(positions: np.ndarray, grid: int, prefix_tokens: int, antialias: bool) -> np.ndarray:
    """[..., prefix_tokens + g * g, width] -> [..., prefix_tokens + grid * grid, width]: the leading (class token)
    embeddings as they are, the square patch grid resized bicubically; computed in float64, returned in the input's
    dtype."""
    *lead, tokens, width = positions.shape
    old_grid = int(round(np.sqrt(tokens - prefix_tokens)))
    if old_grid * old_grid != tokens - prefix_tokens:
        raise ValueError(f"{tokens - prefix_tokens} patch position embeddings do not form a square grid")
    flat = positions.reshape(-1, tokens, width).astype(np.float64)
    patches = flat[:, prefix_tokens:].reshape(-1, old_grid, old_grid, width)
    matrix = (antialiased_bicubic_matrix if antialias else bicubic_matrix)(old_grid, grid)
    resized = np.einsum("ip,jq,bpqd->bijd", matrix, matrix, patches).reshape(-1, grid * grid, width)
    result = np.concatenate([flat[:, :prefix_tokens], resized], axis=1)
    return result.reshape(*lead, prefix_tokens + grid * grid, width).astype(positions.dtype)
