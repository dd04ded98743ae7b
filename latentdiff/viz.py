"""Pictures: image grids and 2-D scatter plots as tensors and PNG files (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped."""
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] → (3 or 1, H', W') grid in [0, 1], ``nrow`` images per row (default ~√N)."""
    n = images.shape[0]
    nrow = nrow or max(1, int(round(n**0.5)))
    return make_grid(to_unit(images), nrow=nrow, padding=padding, pad_value=0.5)


def scatter_image(points: torch.Tensor, reference: torch.Tensor | None = None, size: int = 256,
                  extent: float | None = None) -> torch.Tensor:
    """Rasterise 2-D points into an RGB image (3, size, size) in [0, 1].

    Samples are drawn white, ``reference`` points (e.g. the data) blue beneath them; the square view
    spans ±``extent`` (default: a little beyond the reference's or the points' largest coordinate).
    """
    pts = points.detach().float().cpu()
    ref = reference.detach().float().cpu() if reference is not None else None
    if extent is None:
        base = ref if ref is not None else pts
        extent = float(base.abs().max()) * 1.15 + 1e-6
    img = torch.zeros(3, size, size)

    def splat(p: torch.Tensor, colour: tuple) -> None:
        ij = ((p / extent + 1) / 2 * (size - 1)).round().long()
        keep = ((ij >= 0) & (ij < size)).all(1)
        ij = ij[keep]
        for c, v in enumerate(colour):
            img[c, size - 1 - ij[:, 1], ij[:, 0]] = v

    if ref is not None:
        splat(ref, (0.2, 0.4, 1.0))
    splat(pts, (1.0, 1.0, 1.0))
    return img


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Save a (C, H, W) image in [0, 1] as PNG (folders are created)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, str(path))
    return path
