"""Beta schedules, respaced posterior coefficients and sampling timestep subsequences."""

import math

import pytest
import torch

from latentdiff.schedules import make_beta_schedule, posterior_coefficients, spaced_timesteps


def test_linear_schedule_runs_from_beta_start_to_beta_end_and_destroys_the_signal():
    betas = make_beta_schedule("linear", 1000, 1e-4, 0.02)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    # ᾱ_T = ∏(1 − β_t) ≈ exp(−Σβ) = exp(−10.05) ≈ 4e-5: x_T carries (almost) nothing of x_0.
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    assert alphas_cumprod[-1] < 1e-4


def test_cosine_schedule_reproduces_the_squared_cosine_alpha_bar():
    T, s = 1000, 0.008
    betas = make_beta_schedule("cosine", T)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    expected = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    # Away from the end, where β is clipped at 0.999, ᾱ(t) follows Nichol & Dhariwal's Eq. 17 exactly.
    assert torch.allclose(alphas_cumprod[:-20], expected[:-20], rtol=1e-10, atol=1e-12)
    assert betas.max() <= 0.999 and alphas_cumprod[-1] < 1e-6


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="linear"):
        make_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="beta_start"):
        make_beta_schedule("linear", 10, 0.5, 0.1)


def test_posterior_coefficients_on_consecutive_steps_are_eq7():
    betas = make_beta_schedule("linear", 100, 1e-3, 0.05)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta, coef_x0, coef_xt, var = posterior_coefficients(abar, abar_prev)
    alphas = 1 - betas
    assert torch.allclose(beta, betas, rtol=1e-10)
    assert torch.allclose(var, betas * (1 - abar_prev) / (1 - abar), rtol=1e-10)
    assert torch.allclose(coef_x0, abar_prev.sqrt() * betas / (1 - abar), rtol=1e-10)
    assert torch.allclose(coef_xt, alphas.sqrt() * (1 - abar_prev) / (1 - abar), rtol=1e-10)
    assert var[0] == 0 and coef_x0[0] == pytest.approx(1.0)  # q(x_0 | x_1, x_0) is a point mass at x_0


def test_respaced_betas_compose_to_the_same_alpha_bar():
    betas = make_beta_schedule("cosine", 1000)
    abar = torch.cumprod(1 - betas, 0)
    ts = spaced_timesteps(1000, 37, "linspace")
    sub = abar[ts]
    sub_prev = torch.cat([torch.ones(1, dtype=torch.float64), sub[:-1]])
    beta, *_ = posterior_coefficients(sub, sub_prev)
    # The respaced process is a Markov chain whose marginals q(x_t | x_0) are those of the full one.
    assert torch.allclose(torch.cumprod(1 - beta, 0), sub, rtol=1e-10)


def test_spacings_match_their_definitions():
    T, S = 1000, 50
    assert torch.equal(spaced_timesteps(T, S, "leading"), torch.arange(0, 1000, 20))
    assert torch.equal(spaced_timesteps(T, S, "trailing"), torch.arange(19, 1000, 20))
    lin = spaced_timesteps(T, S, "linspace")
    assert lin[0] == 0 and lin[-1] == T - 1 and len(lin) == S
    assert torch.equal(lin, torch.tensor([round(i * 999 / 49) for i in range(50)]))
    for spacing in ("linspace", "leading", "trailing"):
        for steps in (1, 3, 999, 1000):
            ts = spaced_timesteps(T, steps, spacing)
            assert len(ts) == steps and bool((ts.diff() > 0).all()) and 0 <= ts.min() and ts.max() < T
    assert torch.equal(spaced_timesteps(T, None), torch.arange(T))


def test_bad_steps_and_spacing_are_clear_errors():
    with pytest.raises(ValueError, match="steps"):
        spaced_timesteps(100, 0)
    with pytest.raises(ValueError, match="steps"):
        spaced_timesteps(100, 101)
    with pytest.raises(ValueError, match="trailing"):
        spaced_timesteps(100, 10, "middle")


def test_one_linspace_step_starts_from_the_noisiest_level():
    # a one-step chain (full, or the partial chain of an edit) must start at T-1, not at index 0
    assert spaced_timesteps(1000, 1, "linspace").tolist() == [999]
    assert spaced_timesteps(300, 1, "linspace").tolist() == [299]
