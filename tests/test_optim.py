"""The learning-rate schedule and the EMA of the weights (latentdiff.optim), against their closed forms."""

import math

import pytest
import torch

from latentdiff.config import TrainConfig
from latentdiff.optim import EMA, lr_at, power_ema_gamma


def test_learning_rate_schedule_warmup_then_cosine():
    c = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(50, TrainConfig(steps=100, lr=0.5)) == 0.5


def test_ema_follows_the_closed_form_average():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    expected = 0.0
    for k in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(k))
        ema.update(model)
        expected = 0.9 * expected + 0.1 * k
    assert ema.module.weight.item() == pytest.approx(expected)
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(1 / 10)


def test_power_ema_gamma_gives_the_profile_its_relative_width():
    # Karras et al. 2024 quote γ = 16.97 for σ_rel = 0.05 and γ = 6.94 for 0.10
    assert power_ema_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert power_ema_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma_rel in (0.03, 0.15, 0.25):  # the profile p(τ) ∝ τ^γ on [0, 1], integrated numerically
        gamma = power_ema_gamma(sigma_rel)
        tau = torch.linspace(0, 1, 200001, dtype=torch.float64)
        p = tau ** gamma / torch.trapezoid(tau ** gamma, tau)
        mean = torch.trapezoid(tau * p, tau)
        std = torch.trapezoid((tau - mean) ** 2 * p, tau).sqrt()
        assert std.item() == pytest.approx(sigma_rel, rel=1e-4)  # a width relative to the run's length
    with pytest.raises(ValueError, match="sigma_rel"):
        power_ema_gamma(0.3)


def test_power_ema_is_the_weighted_average_of_the_whole_run():
    # d_n = (1 - 1/n)^(γ+1) leaves Σ_i w_i θ_i with w_i = (i^(γ+1) - (i-1)^(γ+1)) / n^(γ+1): the first weights
    # count (no initialisation left at all, d_1 = 0), and the average is a fixed share of any run's length
    model = torch.nn.Linear(1, 1, bias=False).double()
    ema = EMA(model, sigma_rel=0.1)
    g1 = ema.gamma + 1
    thetas = torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for n, theta in enumerate(thetas, start=1):
        with torch.no_grad():
            model.weight.fill_(theta.item())
        ema.update(model)
        i = torch.arange(1, n + 1, dtype=torch.float64)
        weights = (i ** g1 - (i - 1) ** g1) / n ** g1
        assert ema.module.weight.item() == pytest.approx((weights * thetas[:n]).sum().item(), rel=1e-9, abs=1e-12)
    # a state saved and loaded carries on the same profile (resume)
    again = EMA(model, sigma_rel=0.1)
    again.load_state_dict(ema.state_dict())
    assert again.current_decay() == pytest.approx((1 - 1 / 301) ** g1)
