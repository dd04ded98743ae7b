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


def save_gif(frames: list[torch.Tensor], path: str | Path, duration_ms: int = 100) -> Path:
    """Save (C, H, W) frames in [0, 1] as an animated GIF that loops (PIL, which torchvision brings)."""
    from PIL import Image

    def to_pil(frame: torch.Tensor) -> Image.Image:
        array = frame.detach().float().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [to_pil(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def forward_process_frames(diffusion, x0: torch.Tensor, render, num_frames: int = 20,
                           generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The forward process as pictures: ``render(x_t)`` for x_t ~ q(x_t | x0) (Ho et al. 2020, Eq. 4) at
    ``num_frames`` timesteps evenly spaced over [0, T − 1]. One ε is drawn and kept for every frame, so
    each point (or latent) slides continuously from the data towards its own N(0, I) draw.

    x0: (N, ...) data or normalised latents; render: (N, ...) → (C, H, W) image in [0, 1].
    """
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    ts = torch.linspace(0, diffusion.num_timesteps - 1, num_frames).round().long()
    return [render(diffusion.q_sample(x0, t.expand(x0.shape[0]).to(x0.device), noise)) for t in ts]


def kept_steps(num_recorded: int, columns: int) -> torch.Tensor:
    """Indices of (up to) ``columns`` recorded steps, evenly spread from the first to the last."""
    return torch.linspace(0, num_recorded - 1, min(num_recorded, columns)).round().long().unique()


def reverse_process_grid(trajectory: dict, decode, nrow_max: int = 12) -> torch.Tensor:
    """The reverse process as a grid: for each sample two rows, its state x_t then its prediction x̂0, at
    (up to ``nrow_max``) recorded steps from t = T − 1 on the left to the end on the right.

    trajectory: ``GaussianDiffusion.sample(..., return_trajectory=True)``'s dict, {"t": (K,), "x_t": (K, B,
    ...), "x0_pred": (K, B, ...)}; decode: normalised latents (M, ...) → images (M, C, H, W) in [-1, 1].
    """
    keep = kept_steps(trajectory["x_t"].shape[0], nrow_max)
    x_t, x0 = trajectory["x_t"][keep], trajectory["x0_pred"][keep]  # (K', B, ...)
    rows = []
    for b in range(x_t.shape[1]):
        rows += [decode(x_t[:, b]), decode(x0[:, b])]
    return image_grid(torch.cat(rows), nrow=len(keep))


def reverse_process_scatter(trajectory: dict, reference: torch.Tensor | None = None, columns: int = 12,
                            size: int = 128, extent: float = 4.0) -> torch.Tensor:
    """The reverse process of 2-D points as two strips of scatter plots over t: the cloud x_t on top, its
    predictions x̂0 beneath, at (up to ``columns``) recorded steps from t = T − 1 to the end.

    trajectory: as for ``reverse_process_grid`` with x_t, x0_pred of shape (K, N, 2); reference: (M, 2) data
    drawn blue beneath every panel; each panel spans ±``extent``. Returns (3, H, W) in [0, 1].
    """
    keep = kept_steps(trajectory["x_t"].shape[0], columns)
    panels = [scatter_image(trajectory[key][k], reference, size, extent) for key in ("x_t", "x0_pred") for k in keep]
    return make_grid(torch.stack(panels), nrow=len(keep), padding=2, pad_value=0.5)
