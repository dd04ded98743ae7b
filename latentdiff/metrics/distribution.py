"""Distances between sample sets: sliced Wasserstein (for points)."""

from __future__ import annotations

import torch


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 256, p: int = 2,
                       generator: torch.Generator | None = None) -> float:
    """Sliced p-Wasserstein distance between two equal-size sets of D-dim points (Bonneel et al., 2015).

    SW_p(a, b) = ( E_θ W_p^p(θᵀa, θᵀb) )^(1/p), θ uniform on the unit sphere; each 1-D W_p is exact
    from sorted projections. ``a``, ``b``: (N, D). Returns a float.
    """
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double().flatten(1), b.double().flatten(1)
    theta = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ theta, dim=0)
    pb, _ = torch.sort(b @ theta, dim=0)
    return float((pa - pb).abs().pow(p).mean().pow(1.0 / p))
