"""Distances between sample sets: sliced Wasserstein (for points), Fréchet distance of fitted Gaussians,
k-NN precision/recall, and the mean pairwise distance within a set. Sets are (N, D) tensors (rows are
examples; features or points), computed in float64 on the CPU."""

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


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64: the Gaussian FD fits."""
    x = features.detach().double().flatten(1).cpu()
    if x.shape[0] < 2:
        raise ValueError(f"feature_statistics needs at least 2 feature vectors, got {x.shape[0]}")
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric PSD matrix by eigendecomposition (tiny negative
    eigenvalues from rounding are set to zero)."""
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance_from_statistics(mean_a, cov_a, mean_b, cov_b) -> float:
    """Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b) (Dowson & Landau 1982;
    the FID of Heusel et al. 2017 on Inception features):

        FD = ‖μ_a − μ_b‖² + tr(C_a + C_b − 2 (C_a^½ C_b C_a^½)^½).

    tr (C_a C_b)^½ is taken as Σ √λ over the eigenvalues λ of the symmetric PSD product C_a^½ C_b C_a^½
    (the same eigenvalues as C_a C_b), all by ``eigh`` in float64, so no complex sqrtm is needed.
    Means (D,), covariances (D, D). Returns a float ≥ 0 (rounding below zero is clamped).
    """
    mean_a, mean_b, cov_a, cov_b = (torch.as_tensor(v).double().cpu() for v in (mean_a, mean_b, cov_a, cov_b))
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (*mean_a.shape, *mean_a.shape):
        raise ValueError(f"frechet_distance: statistics of different sizes: means {tuple(mean_a.shape)}, "
                         f"{tuple(mean_b.shape)}, covariances {tuple(cov_a.shape)}, {tuple(cov_b.shape)}")
    root_a = _sqrtm_psd(cov_a)
    product = root_a @ cov_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mean_a - mean_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    return max(float(fd), 0.0)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (see the statistics form)."""
    return frechet_distance_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b))


def _pairwise_chunks(query: torch.Tensor, ref: torch.Tensor, chunk: int):
    """(start, distances (≤chunk, M)) Euclidean distances from query rows to all ref rows, chunk by chunk."""
    for start in range(0, query.shape[0], chunk):
        yield start, torch.cdist(query[start:start + chunk], ref)


def knn_radii(x: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """(N,) distance of each row of (N, D) ``x`` to its k-th nearest other row."""
    x = x.detach().double().flatten(1).cpu()
    if x.shape[0] <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {x.shape[0]}")
    # the smallest distance is the point to itself (0): the k-th neighbour is at sorted position k
    return torch.cat([d.topk(k + 1, dim=1, largest=False).values[:, k] for _, d in _pairwise_chunks(x, x, chunk)])


def manifold_coverage(query: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of ``query`` rows inside at least one ball B(ref_i, ref_radii_i): the estimated manifold of
    ``ref`` of Kynkäänniemi et al. 2019, Eq. 1–2."""
    query, ref = query.detach().double().flatten(1).cpu(), ref.detach().double().flatten(1).cpu()
    radii = ref_radii.double().cpu()
    inside = torch.cat([(d <= radii[None, :]).any(dim=1) for _, d in _pairwise_chunks(query, ref, chunk)])
    return float(inside.double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
    Assessing Generative Models", Eq. 1–3): each set's manifold is the union of balls around its points
    reaching their k-th nearest neighbour (k = 3 in the paper). Precision: the fraction of ``fake`` inside
    the real manifold (quality); recall: the fraction of ``real`` inside the fake manifold (coverage).

    ``real``: (N, D), ``fake``: (M, D) features. Returns {"precision": float, "recall": float}.
    """
    return {"precision": manifold_coverage(fake, real, knn_radii(real, k, chunk), chunk),
            "recall": manifold_coverage(real, fake, knn_radii(fake, k, chunk), chunk)}


def mean_pairwise_distance(features: torch.Tensor, chunk: int = 1024) -> float:
    """Mean Euclidean distance over all pairs of distinct rows of (N, D) features: a set's spread."""
    x = features.detach().double().flatten(1).cpu()
    n = x.shape[0]
    if n < 2:
        return float("nan")
    total = sum(float(d.sum()) for _, d in _pairwise_chunks(x, x, chunk))  # the diagonal adds zeros
    return total / (n * (n - 1))
