"""Samplers against closed forms for Gaussian data N(0, s²I) with the exact ε predictor.

With ε* linear in x_t every sampler step is x_s = m · x_t + σ z, so the output variance follows
v_s = m² v_t + σ² from v_T = 1, computed here from the step formulas written out again.
"""

import math

import pytest
import torch

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.schedules import spaced_timesteps

N = (8000, 4)  # 32,000 values: the sample variance has a relative standard error of 0.8 %


def exact_eps(diffusion, s):
    def model(x_t, t, cond=None):
        abar = diffusion.alphas_cumprod[t.cpu()].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return (1 - abar).sqrt() * x_t / (abar * s**2 + 1 - abar)
    return model


def closed_form_variance(diff, s, sampler, timesteps, eta=0.0):
    """Output variance / s² of a sampler run on the exact predictor (Ho et al. Eq. 7, Song et al. Eq. 12)."""
    abar = diff.alphas_cumprod.tolist()
    order = timesteps.flip(0).tolist()
    v = 1.0
    for i, t in enumerate(order):
        a = abar[t]
        a_prev = abar[order[i + 1]] if i + 1 < len(order) else 1.0
        k = math.sqrt(1 - a) / (a * s**2 + 1 - a)  # ε* = k x_t
        x0_coef = (1 - math.sqrt(1 - a) * k) / math.sqrt(a)  # x̂0 = x0_coef x_t
        beta = 1 - a / a_prev
        beta_tilde = beta * (1 - a_prev) / (1 - a)
        if sampler == "ddpm":
            m = math.sqrt(a_prev) * beta / (1 - a) * x0_coef + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
            sigma2 = 0.0 if a_prev == 1.0 else (beta if diff.variance == "beta" else beta_tilde)
        else:
            sigma2 = eta**2 * beta_tilde
            m = math.sqrt(a_prev) * x0_coef + math.sqrt(1 - a_prev - sigma2) * k
        v = m * m * v + sigma2
    return v / s**2


def sample_variance(diff, s, **kw):
    g = torch.Generator().manual_seed(0)
    x = diff.sample(exact_eps(diff, s), N, generator=g, **kw)
    return float(x.var() / s**2)


@pytest.mark.parametrize("sampler,variance",
                         [("ddpm", "beta"), ("ddpm", "beta_tilde"), ("ddim", "beta_tilde")])
def test_full_schedule_samples_have_the_data_variance_within_3_percent(sampler, variance):
    s = 2.0
    diff = GaussianDiffusion(variance=variance)
    got = sample_variance(diff, s, sampler=sampler)
    expected = closed_form_variance(diff, s, sampler, torch.arange(1000))
    assert got == pytest.approx(1.0, abs=0.03)
    assert expected == pytest.approx(1.0, abs=0.03)
    assert got == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_ddim_with_few_steps_matches_its_closed_form_variance(spacing):
    s = 0.5
    diff = GaussianDiffusion()
    expected = closed_form_variance(diff, s, "ddim", spaced_timesteps(1000, 50, spacing))
    assert expected < 0.95  # 50 linear-schedule steps lose variance here: the test is not of s² itself
    assert sample_variance(diff, s, sampler="ddim", steps=50, timestep_spacing=spacing) == \
        pytest.approx(expected, rel=0.03)


def test_ddim_with_intermediate_eta_matches_its_closed_form_variance():
    s, eta = 0.5, 0.5
    diff = GaussianDiffusion()
    expected = closed_form_variance(diff, s, "ddim", spaced_timesteps(1000, 10), eta=eta)
    x = diff.sample(exact_eps(diff, s), (20000, 4), sampler="ddim", steps=10, eta=eta,
                    generator=torch.Generator().manual_seed(0))
    # σ² = η² β̃ here; η β̃ would give 4.4 % less variance, 9 standard errors away.
    assert float(x.var() / s**2) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_respaced_ddpm_matches_its_closed_form_variance(variance):
    s = 0.5
    diff = GaussianDiffusion(variance=variance)
    expected = closed_form_variance(diff, s, "ddpm", spaced_timesteps(1000, 40))
    assert sample_variance(diff, s, sampler="ddpm", steps=40) == pytest.approx(expected, rel=0.03)


def test_ddim_eta_one_is_ancestral_ddpm_with_beta_tilde():
    diff = GaussianDiffusion(variance="beta_tilde")
    model = exact_eps(diff, 0.6)
    noise = torch.randn(500, 3)
    for steps in (None, 25):
        ddpm = diff.sample(model, noise.shape, sampler="ddpm", steps=steps, noise=noise,
                           generator=torch.Generator().manual_seed(5))
        ddim = diff.sample(model, noise.shape, sampler="ddim", eta=1.0, steps=steps, noise=noise,
                           generator=torch.Generator().manual_seed(5))
        # Same noise draws, algebraically the same step: equal samples, hence equal distributions.
        assert torch.allclose(ddpm, ddim, atol=1e-4)


def test_ddim_eta_zero_is_deterministic_and_inverts():
    diff = GaussianDiffusion()
    model = exact_eps(diff, 0.8)
    x0 = 0.8 * torch.randn(256, 4)
    x_T = diff.ddim_invert(model, x0, steps=100)
    assert float(x_T.std()) == pytest.approx(1.0, abs=0.1)  # the encoding is Gaussian noise
    a = diff.sample(model, x0.shape, sampler="ddim", steps=100, noise=x_T,
                    generator=torch.Generator().manual_seed(1))
    b = diff.sample(model, x0.shape, sampler="ddim", steps=100, noise=x_T,
                    generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    # Inversion evaluates ε̂ one step early: its error shrinks like 1/steps.
    assert float((a - x0).norm() / x0.norm()) < 0.015
    x_T = diff.ddim_invert(model, x0)
    assert float((diff.sample(model, x0.shape, sampler="ddim", noise=x_T) - x0).norm() / x0.norm()) < 0.0015


def test_generator_makes_sampling_reproducible():
    diff = GaussianDiffusion(num_timesteps=50)
    model = exact_eps(diff, 1.0)
    a = diff.sample(model, (16, 2), generator=torch.Generator().manual_seed(0))
    b = diff.sample(model, (16, 2), generator=torch.Generator().manual_seed(0))
    c = diff.sample(model, (16, 2), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_trajectory_records_every_kth_step_and_ends_at_the_sample():
    diff = GaussianDiffusion(num_timesteps=100)
    model = exact_eps(diff, 1.0)
    x, traj = diff.sample(model, (8, 3), sampler="ddim", steps=10, return_trajectory=True, trajectory_every=4,
                          generator=torch.Generator().manual_seed(0), progress=True)
    ts = spaced_timesteps(100, 10).flip(0)
    assert torch.equal(traj["t"], ts[[0, 4, 8, 9]])
    assert traj["x_t"].shape == (4, 8, 3) and traj["x0_pred"].shape == (4, 8, 3)
    assert torch.allclose(traj["x0_pred"][-1], x)  # DDIM's last step returns the x0 prediction


def test_clip_denoised_keeps_samples_in_range():
    diff = GaussianDiffusion(num_timesteps=100)
    model = exact_eps(diff, 3.0)
    x = diff.sample(model, (64, 4), sampler="ddim", steps=10, clip_denoised=True)
    assert x.abs().max() <= 1.0
    assert diff.sample(model, (64, 4), sampler="ddim", steps=10).abs().max() > 1.0


def test_bad_sampling_arguments_are_clear_errors():
    diff = GaussianDiffusion(num_timesteps=10)
    model = exact_eps(diff, 1.0)
    with pytest.raises(ValueError, match="sampler"):
        diff.sample(model, (2, 2), sampler="euler")
    with pytest.raises(ValueError, match="eta"):
        diff.sample(model, (2, 2), sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="noise"):
        diff.sample(model, (2, 2), noise=torch.randn(3, 2))
    with pytest.raises(ValueError, match="steps"):
        diff.sample(model, (2, 2), steps=11)
