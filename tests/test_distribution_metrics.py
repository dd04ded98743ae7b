"""Sliced Wasserstein: zero for identical sets, the exact shift for translated ones."""

import math

import torch

from latentdiff.metrics.distribution import sliced_wasserstein


def test_identical_sets_have_zero_distance():
    x = torch.randn(500, 2)
    assert sliced_wasserstein(x, x[torch.randperm(500)]) < 1e-12


def test_translation_gives_the_closed_form():
    # Shifting by d: each projection moves by θᵀd, so SW_2² = E[(θᵀd)²] = |d|²/D for θ uniform on the sphere.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g)
    d = torch.tensor([3.0, 4.0])
    sw = sliced_wasserstein(x, x + d, num_projections=20000, generator=g)
    assert abs(sw - 5.0 / math.sqrt(2)) < 0.02
