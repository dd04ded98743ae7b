"""2-D toy distributions for diffusion directly on points: swiss roll, two moons, Gaussian mixture.

Each is deterministic by (seed, split) and standardised with constants computed from the
distribution itself (not from the sample), so train and test share one scale: points are centred
on the noiseless curve's mean and divided by one scalar, the root mean per-coordinate standard
deviation of the noisy distribution. The aspect ratio is kept, and the overall std is about 1.

    swissroll: t ~ U[1.5π, 4.5π], (t cos t, t sin t) + N(0, noise² I)   (2-D slice of the 3-D
               swiss roll of Marsland, "Machine Learning", 2009, as in sklearn.make_swiss_roll)
    moons:     u ~ U[0, π]; upper (cos u, sin u), lower (1 − cos u, ½ − sin u); + N(0, noise² I)
               (as sklearn.make_moons); attribute ``moon`` {upper, lower}
    gaussian_mixture: K components on a circle of radius R, each N(μ_k, std² I), equal weights;
               attribute ``component`` {"0", ..., "K-1"}
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from latentdiff.data.common import check_split, split_rng
from latentdiff.data.schema import AttributeSchema

DEFAULT_SIZES = {"train": 10_000, "test": 2_000}
QUADRATURE = 100_001  # points of the dense parameter grid that gives the curves' exact moments


def swissroll_curve(t: np.ndarray) -> np.ndarray:
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=-1)


def moons_curve(u: np.ndarray, moon: np.ndarray) -> np.ndarray:
    upper = np.stack([np.cos(u), np.sin(u)], axis=-1)
    lower = np.stack([1 - np.cos(u), 0.5 - np.sin(u)], axis=-1)
    return np.where(moon[:, None] == 0, upper, lower)


def standardiser(curve: np.ndarray, noise: float) -> tuple[np.ndarray, float]:
    """(mean, scale) of "curve point + N(0, noise² I)", from a dense, evenly weighted curve sample.

    scale = sqrt(mean over coordinates of Var[coordinate]) = sqrt(mean_d Var_curve[d] + noise²).
    """
    return curve.mean(0), float(np.sqrt(curve.var(0).mean() + noise**2))


class PointDataset(Dataset):
    """(N, 2) float32 points with labels (N, num_attrs); items are (point (2,), labels (num_attrs,))."""

    def __init__(self, points: np.ndarray, attributes: np.ndarray, schema: AttributeSchema):
        self.points = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        labels = np.asarray(attributes, dtype=np.int64).reshape(len(points), len(schema))
        self.attributes = torch.from_numpy(labels)
        self.schema = schema
        self.sample_shape = tuple(self.points.shape[1:])

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, i):
        return self.points[i], self.attributes[i]


def _size(split: str, size: int | None) -> int:
    check_split(split)
    size = DEFAULT_SIZES[split] if size is None else int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return size


def swissroll(split: str = "train", size: int | None = None, seed: int = 0,
              noise: float = 0.5) -> PointDataset:
    """Swiss roll points; ``noise`` is the std of the Gaussian jitter in the curve's units (t up to 4.5π)."""
    n, rng = _size(split, size), split_rng(seed, split)
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    points = swissroll_curve(t) + noise * rng.standard_normal((n, 2))
    mean, scale = standardiser(swissroll_curve(np.linspace(1.5 * math.pi, 4.5 * math.pi, QUADRATURE)), noise)
    return PointDataset((points - mean) / scale, np.zeros((n, 0)), AttributeSchema([], []))


def moons(split: str = "train", size: int | None = None, seed: int = 0, noise: float = 0.05) -> PointDataset:
    """Two interleaved half circles; attribute ``moon`` says which one a point was drawn from."""
    n, rng = _size(split, size), split_rng(seed, split)
    moon = rng.integers(2, size=n)
    points = moons_curve(math.pi * rng.random(n), moon) + noise * rng.standard_normal((n, 2))
    grid = np.linspace(0, math.pi, QUADRATURE)
    both = moons_curve(np.concatenate([grid, grid]), np.repeat([0, 1], QUADRATURE))
    mean, scale = standardiser(both, noise)
    schema = AttributeSchema(["moon"], [["upper", "lower"]])
    return PointDataset((points - mean) / scale, moon[:, None], schema)


def gaussian_mixture(split: str = "train", size: int | None = None, seed: int = 0, num_components: int = 8,
                     radius: float = 4.0, std: float = 0.5) -> PointDataset:
    """Equal-weight mixture of ``num_components`` isotropic Gaussians (std ``std``) with means evenly
    spaced on a circle of ``radius``. Scale: Var per coordinate = radius²/2 + std² for K >= 3 (the
    means' cos² and sin² average to ½); the means' empirical moments cover K = 1, 2 as well."""
    if num_components < 1:
        raise ValueError(f"gaussian_mixture: num_components must be >= 1, got {num_components}")
    n, rng = _size(split, size), split_rng(seed, split)
    angles = 2 * math.pi * np.arange(num_components) / num_components
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (K, 2)
    component = rng.integers(num_components, size=n)
    points = means[component] + std * rng.standard_normal((n, 2))
    centre, scale = standardiser(means, std)
    schema = AttributeSchema(["component"], [[str(k) for k in range(num_components)]])
    return PointDataset((points - centre) / scale, component[:, None], schema)
