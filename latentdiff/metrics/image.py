"""Reconstruction metrics for image batches: MSE, PSNR, SSIM and LPIPS.

Images are (B, C, H, W) tensors in [-1, 1] (data range 2) unless ``data_range`` says otherwise. Each
metric is computed per image and averaged over the batch (``reduction="mean"``), or returned per image
(``reduction="none"``, shape (B,)). Computed in float64 on the CPU, so the figures do not depend on the
batch split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"{name}: expected two (B, C, H, W) batches of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    dtype = torch.float64 if a.device.type == "cpu" else torch.float32
    return a.detach().to(dtype), b.detach().to(dtype)


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction={reduction!r}: choose mean or none")


def mse(a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error per image, (1/D) Σ (a − b)² over its D = C·H·W values."""
    a, b = _check_pair(a, b, "mse")
    return _reduce(_mse_per_image(a, b), reduction)


def _mse_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 · log10(R² / MSE) dB with R the data range (2 for [-1, 1]);
    identical images give +inf. The mean over images is the usual per-image-average PSNR."""
    a, b = _check_pair(a, b, "psnr")
    per_image = 10.0 * torch.log10(data_range**2 / _mse_per_image(a, b))
    return _reduce(per_image, reduction)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """1-D Gaussian weights w_i ∝ exp(−(i − c)² / 2σ²), i = 0 … size−1, c the centre, summing to 1."""
    i = torch.arange(size, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-(i**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, "Image Quality Assessment: From Error Visibility to
    Structural Similarity", Eq. 13), with their Gaussian window (11 × 11, σ = 1.5).

    At each window position, with Gaussian-weighted means μ, variances σ² and covariance σ_ab (Eq. 14–16),

        SSIM = (2 μ_a μ_b + C1)(2 σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2)),
        C1 = (k1 R)², C2 = (k2 R)²,

    averaged over the positions where the window fits inside the image (no padding, as in the reference
    MATLAB code) and over channels. Per-image values in [-1, 1]; 1 means identical.

    Args:
        a, b: (B, C, H, W) images, H and W at least ``window_size``.
        data_range: R, the span of pixel values (2 for [-1, 1], 1 for [0, 1], 255 for bytes).
    """
    a, b = _check_pair(a, b, "ssim")
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"ssim: images of {tuple(a.shape[-2:])} are smaller than the "
                         f"{window_size}×{window_size} window; use a smaller window_size")
    C = a.shape[1]
    w = gaussian_window(window_size, sigma, a.dtype).to(a.device)
    rows, cols = w.view(1, 1, -1, 1).repeat(C, 1, 1, 1), w.view(1, 1, 1, -1).repeat(C, 1, 1, 1)

    def blur(x):  # separable Gaussian filter, per channel, "valid" positions only
        return F.conv2d(F.conv2d(x, rows, groups=C), cols, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return _reduce(ssim_map.flatten(1).mean(1), reduction)


_LPIPS_CACHE: dict = {}


def lpips_distance(a: torch.Tensor, b: torch.Tensor, net: str = "alex", pretrained: bool = True,
                   reduction: str = "mean", batch_size: int = 250) -> torch.Tensor:
    """LPIPS distance (Zhang et al. 2018) per image between (B, 1 or 3, H, W) batches in [-1, 1].

    Loads the network once per (net, pretrained, device) through ``autoencoders.load_lpips``, which raises
    ``LPIPSUnavailable`` (a FileNotFoundError, one line naming the missing backbone file) where the
    pretrained backbone is not in the torch cache; ``pretrained=False`` (random backbone) is for tests.
    Images are scored in chunks of ``batch_size``.
    """
    from autoencoders.perceptual import load_lpips

    if a.shape != b.shape:
        raise ValueError(f"lpips_distance: expected two batches of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    key = (net, pretrained, str(a.device))
    if key not in _LPIPS_CACHE:
        model = load_lpips(net, pretrained, without="leave LPIPS out of the evaluation")
        _LPIPS_CACHE[key] = model.to(a.device)
    model = _LPIPS_CACHE[key]
    with torch.no_grad():
        chunks = zip(a.split(batch_size), b.split(batch_size))
        per_image = torch.cat([model(x.float(), y.float()) for x, y in chunks])
    return _reduce(per_image.double(), reduction)


def count_components(foreground: torch.Tensor, min_pixels: int = 1) -> torch.Tensor:
    """Connected components of each boolean mask (B, H, W) → (B,) counts, 8-connectivity.

    Every foreground pixel starts with its own label; a 3×3 max-pool restricted to the foreground spreads the
    largest label over each component until nothing changes (at most the longest path in a component).
    Components of fewer than ``min_pixels`` pixels are not counted (decoder specks). For the shapes data the
    foreground of an image in [-1, 1] is ``images.amax(1) > 0`` (some channel above half intensity), and an
    image holds one shape exactly when the count is 1.
    """
    if foreground.dim() != 3:
        raise ValueError(f"count_components: expected (B, H, W) masks, got {tuple(foreground.shape)}")
    fg = foreground.bool().cpu()
    B, H, W = fg.shape
    labels = torch.arange(1, H * W + 1, dtype=torch.float64).view(1, H, W) * fg  # exact up to 2^53 pixels
    while True:
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * fg
        if torch.equal(grown, labels):
            break
        labels = grown
    counts = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        _, sizes = labels[b][fg[b]].unique(return_counts=True)
        counts[b] = int((sizes >= min_pixels).sum())
    return counts
