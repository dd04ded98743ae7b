"""Beta schedules, respaced posterior coefficients and sampling timestep subsequences."""

import math

import pytest
import torch

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.schedules import check_timesteps, make_beta_schedule, posterior_coefficients, spaced_timesteps


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
    with pytest.raises(ValueError, match="alphas_cumprod"):
        spaced_timesteps(100, 10, "logsnr")


def test_one_linspace_step_starts_from_the_noisiest_level():
    # a one-step chain (full, or the partial chain of an edit) must start at T-1, not at index 0
    assert spaced_timesteps(1000, 1, "linspace").tolist() == [999]
    assert spaced_timesteps(300, 1, "linspace").tolist() == [299]


@pytest.mark.parametrize("T", [10, 50, 100, 250, 1000])
def test_every_spacing_gives_exactly_s_distinct_indices_for_every_s(T):
    """Issue 15: trailing spacing built with a float arange gave S + 1 indices ending at −1 for 62 values of S
    at T = 1000 (61, 103, 121, ...). Every spacing, every S: S strictly increasing indices in 0..T−1."""
    linear = GaussianDiffusion(T, beta_start=0.1 / T, beta_end=min(20 / T, 0.5)).alphas_cumprod
    cosine = GaussianDiffusion(T, beta_schedule="cosine").alphas_cumprod
    for spacing, abar in (("linspace", None), ("leading", None), ("trailing", None), ("logsnr", linear),
                          ("logsnr", cosine)):
        for S in range(1, T + 1):
            ts = spaced_timesteps(T, S, spacing, alphas_cumprod=abar)
            assert ts.dtype == torch.long and ts.shape == (S,), (spacing, S, ts)
            assert int(ts.min()) >= 0 and int(ts.max()) <= T - 1, (spacing, S, ts)
            assert S == 1 or bool((ts.diff() > 0).all()), (spacing, S, ts)
            if spacing in ("linspace", "trailing", "logsnr"):
                assert int(ts[-1]) == T - 1, (spacing, S)  # the chain starts from the noisiest level


def test_trailing_spacing_is_round_of_j_t_over_s_minus_one():
    # the definition, in exact fractions (ties to even, as torch.round): T = 1000, S = 61 is the case
    for T, S in ((1000, 61), (1000, 103), (50, 29), (10, 4)):
        expected = [round(j * T / S) - 1 for j in range(1, S + 1)]
        assert spaced_timesteps(T, S, "trailing").tolist() == expected
        assert expected[0] >= 0


def test_logsnr_spacing_is_uniform_in_log_snr_where_the_schedule_allows():
    diff = GaussianDiffusion(1000)  # linear: λ from 4.61 down to −5.06
    ts = spaced_timesteps(1000, 20, "logsnr", alphas_cumprod=diff.alphas_cumprod)
    lam = 0.5 * (diff.alphas_cumprod / (1 - diff.alphas_cumprod)).log()
    gaps = lam[ts].diff()
    target = float(lam[-1] - lam[0]) / 19
    # equal gaps in λ up to the schedule's resolution, except the first one, where λ(0) − λ(1) = 0.39 alone
    # is most of a gap (the first indices are 0, 1, 4, 10, ...)
    assert float((gaps[1:] - target).abs().max()) < 0.08, gaps
    assert int(ts[0]) == 0 and int(ts[-1]) == 999


def test_check_timesteps_names_what_is_wrong():
    check_timesteps(torch.tensor([0, 3, 9]), 10, 3)
    for bad, words in ((torch.tensor([-1, 3, 9]), "0..9"), (torch.tensor([0, 3, 10]), "0..9"),
                       (torch.tensor([0, 3, 3]), "strictly increasing"), (torch.tensor([5, 3]), "strictly"),
                       (torch.tensor([0.0, 3.0]), "int64"), (torch.tensor([], dtype=torch.long), "empty")):
        with pytest.raises(ValueError, match=words):
            check_timesteps(bad, 10)
    with pytest.raises(ValueError, match="expected 4 timesteps"):
        check_timesteps(torch.tensor([0, 3, 9]), 10, 4)


def test_sampler_loop_and_inversion_refuse_bad_timesteps():
    from latentdiff.samplers import ddim_invert_loop, sample_loop

    diff = GaussianDiffusion(10)
    model = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    for bad in (torch.tensor([-1, 4, 9]), torch.tensor([4, 4, 9])):
        with pytest.raises(ValueError, match="timesteps"):
            sample_loop(diff, model, torch.randn(2, 2), bad, sampler="ddim")
        with pytest.raises(ValueError, match="timesteps"):
            ddim_invert_loop(diff, model, torch.randn(2, 2), bad)


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "logsnr"])
def test_ddim_at_61_steps_keeps_the_spread_of_the_data(spacing):
    """The issue's symptom: with the −1 index, DDIM on N(1, 0.25) data at S = 61 trailing collapsed every
    sample to the mean (std 0.0002); with the exact ε predictor it keeps std ≈ 0.5."""
    diff = GaussianDiffusion(1000)
    mean, std = 1.0, 0.5

    def model(x_t, t, cond=None):  # exact ε of N(mean, std²): √(1−ᾱ)(x_t − √ᾱ mean)/(ᾱ std² + 1 − ᾱ)
        abar = diff.alphas_cumprod[t].to(x_t.dtype).view(-1, 1)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * mean) / (abar * std**2 + 1 - abar)

    x = diff.sample(model, (4000, 1), sampler="ddim", steps=61, timestep_spacing=spacing,
                    generator=torch.Generator().manual_seed(0))
    assert float(x.mean()) == pytest.approx(mean, abs=0.05)
    assert float(x.std()) == pytest.approx(std, rel=0.1)
    x_T = diff.ddim_invert(model, x[:200], steps=61, timestep_spacing=spacing)
    back = diff.sample(model, (200, 1), sampler="ddim", steps=61, timestep_spacing=spacing, noise=x_T)
    # the round trip's discretisation error at 61 steps: mean |error| 0.04-0.07 measured; it was 1.0 with the −1 index
    assert float((back - x[:200]).abs().mean()) < 0.1
