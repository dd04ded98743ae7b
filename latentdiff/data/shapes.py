"""The synthetic ``shapes`` dataset, the embedded default (see DESIGN.md).

One filled shape on a black background per image: ``color`` {red, green, blue, yellow, magenta,
cyan} (saturated), ``size`` {small, large}, ``shape`` {square, circle, triangle}, its centre uniform
over the positions that keep it fully inside the frame. A shape of half-extent h centred at c is

    square:   |x - cx| <= h  and  |y - cy| <= h                    area 4 h²
    circle:   (x - cx)² + (y - cy)² <= h²                           area π h²
    triangle: y <= cy + h  and  |x - cx| <= (y - cy + h) / 2        area 2 h²  (apex up, base 2h)

tested at pixel centres (x, y) = (j + ½, i + ½), or at a k×k grid of sub-pixel points averaged to a
coverage fraction when ``antialias = k > 1``. The whole split is rasterised at once from coordinate
grids (chunked to bound memory) and stored as uint8.
"""

from __future__ import annotations

import numpy as np
import torch

from latentdiff.data.common import TensorImageDataset, check_split, split_rng
from latentdiff.data.schema import AttributeSchema

COLORS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1),
          "yellow": (1, 1, 0), "magenta": (1, 0, 1), "cyan": (0, 1, 1)}
SIZES = ("small", "large")
SHAPES = ("square", "circle", "triangle")
SCHEMA = AttributeSchema(["color", "size", "shape"], [list(COLORS), list(SIZES), list(SHAPES)])
DEFAULT_SIZES = {"train": 50_000, "test": 10_000}


def render_shapes(shape: torch.Tensor, color: torch.Tensor, half: torch.Tensor, centre: torch.Tensor,
                  image_size: int, antialias: int = 1, pixels_per_chunk: int = 2**24) -> torch.Tensor:
    """Rasterise one shape per image.

    Args:
        shape: (N,) long, index into SHAPES.
        color: (N,) long, index into COLORS.
        half: (N,) float, half-extent h in pixels.
        centre: (N, 2) float, (cx, cy) in pixels; pixel (i, j) covers [j, j+1] × [i, i+1].
        image_size: side S of the square images.
        antialias: k; each pixel's value is the fraction of k×k sub-pixel points inside the shape.
        pixels_per_chunk: sub-pixel tests per chunk of images (bounds memory; few chunks run fastest).
    Returns:
        (N, 3, S, S) uint8, 255 × coverage in the shape's colour channels, 0 elsewhere.
    """
    if antialias < 1:
        raise ValueError(f"antialias must be an integer >= 1 (1 = off), got {antialias}")
    s, k = image_size, antialias
    grid = (torch.arange(s * k, dtype=torch.float32) + 0.5) / k  # sub-pixel centres in pixel units
    rgb = torch.tensor(list(COLORS.values()), dtype=torch.uint8)[color]  # (N, 3) of 0/1
    out = torch.empty(shape.shape[0], 3, s, s, dtype=torch.uint8)
    chunk = max(1, pixels_per_chunk // (s * k) ** 2)
    for kind in range(len(SHAPES)):  # each image tests only its own shape's inequalities
        members = (shape == kind).nonzero()[:, 0]
        for a in range(0, len(members), chunk):  # (chunk, S·k, S·k) masks at a time bound memory
            idx = members[a:a + chunk]
            h = half[idx, None, None]
            dx = grid[None, None, :] - centre[idx, 0, None, None]  # (B, 1, Sk)
            dy = grid[None, :, None] - centre[idx, 1, None, None]  # (B, Sk, 1)
            if kind == 0:
                mask = (dx.abs() <= h) & (dy.abs() <= h)
            elif kind == 1:
                mask = dx.square() + dy.square() <= h.square()
            else:
                mask = (dy <= h) & (dx.abs() <= (dy + h) / 2)
            if k > 1:
                value = (torch.nn.functional.avg_pool2d(mask[:, None].float(), k)[:, 0] * 255).round().byte()
            else:
                value = mask.byte() * 255
            out[idx] = value[:, None] * rgb[idx, :, None, None]
    return out


class ShapesDataset(TensorImageDataset):
    """The ``shapes`` split, generated in memory; deterministic by (seed, split).

    Args:
        split: "train" or "test" (different streams derived from ``seed``).
        size: number of images (default 50 000 train / 10 000 test).
        image_size: side in pixels (default 32).
        seed: base seed.
        small, large: half-extent of the shape as a fraction of the side (defaults 1/8 and 1/4).
        antialias: k×k supersampling per pixel; 1 (default) gives crisp, fully saturated pixels.
    """

    def __init__(self, split: str = "train", size: int | None = None, image_size: int | None = None,
                 seed: int = 0, small: float = 0.125, large: float = 0.25, antialias: int = 1):
        check_split(split)
        size = DEFAULT_SIZES[split] if size is None else int(size)
        image_size = 32 if image_size is None else int(image_size)
        if size < 1:
            raise ValueError(f"shapes: size must be >= 1, got {size}")
        if image_size < 8:
            raise ValueError(f"shapes: image_size must be >= 8 pixels, got {image_size}")
        if not 0 < small < large <= 0.5:
            raise ValueError(f"shapes: need 0 < small < large <= 0.5 (fractions of the side), "
                             f"got {small}, {large}")
        rng = split_rng(seed, split)
        color = rng.integers(len(COLORS), size=size)
        size_idx = rng.integers(len(SIZES), size=size)
        shape = rng.integers(len(SHAPES), size=size)
        half = np.where(size_idx == 0, small, large) * image_size
        # uniform centre over [h, S - h]²: the shape lies fully inside the frame
        centre = half[:, None] + rng.random((size, 2)) * (image_size - 2 * half[:, None])
        images = render_shapes(torch.from_numpy(shape), torch.from_numpy(color),
                               torch.from_numpy(half).float(), torch.from_numpy(centre).float(),
                               image_size, antialias)
        attributes = torch.from_numpy(np.stack([color, size_idx, shape], axis=1)).long()
        super().__init__(images, attributes, SCHEMA)
        self.centres = torch.from_numpy(centre).float()  # (N, 2) (cx, cy) in pixels, for evaluation
