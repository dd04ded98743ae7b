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


# -- DPM-Solver++(2M) ---------------------------------------------------------------------------------------
def pf_ode_solution(diff, s, x_T, timesteps):
    """The probability-flow ODE for N(0, s²I) data keeps x_t / √(ᾱ_t s² + 1 − ᾱ_t) constant (x_t ~ N(0, that)
    and the flow is linear), so from the first level ᾱ = ᾱ_{τ_S} it lands on x_0 = s x / √(ᾱ s² + 1 − ᾱ)."""
    abar = float(diff.alphas_cumprod[timesteps[-1]])
    return s * x_T / math.sqrt(abar * s**2 + 1 - abar)


@pytest.mark.parametrize("s", [0.5, 2.0])
def test_dpm_solver_pp_is_far_closer_to_the_exact_ode_solution_than_ddim(s):
    """Relative error against the exact flow, linear schedule T = 1000, logsnr spacing for both samplers.
    Measured (s = 0.5 / 2.0): DDIM 10 steps 0.235 / 0.235, DPM-Solver++ 0.032 / 0.039 (7.4× / 6.0× closer);
    20 steps: DDIM 0.119, DPM-Solver++ 0.0146 (8.2×). Asserted: at least 4× closer, and below 0.05."""
    diff = GaussianDiffusion()
    model = exact_eps(diff, s)
    x_T = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (10, 20):
        exact = pf_ode_solution(diff, s, x_T, diff.spaced_timesteps(steps, "logsnr"))
        errors = {}
        for sampler in ("ddim", "dpm_solver++"):
            x = diff.sample(model, x_T.shape, sampler=sampler, steps=steps, noise=x_T, timestep_spacing="logsnr")
            errors[sampler] = float((x - exact).norm() / exact.norm())
        assert errors["dpm_solver++"] < 0.05, (steps, errors)
        assert errors["ddim"] > 4 * errors["dpm_solver++"], (steps, errors)


def test_dpm_solver_pp_defaults_to_linspace_spacing_and_is_deterministic():
    diff = GaussianDiffusion()
    model = exact_eps(diff, 0.5)
    x_T = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    a = diff.sample(model, x_T.shape, sampler="dpm_solver++", steps=10, noise=x_T,
                    generator=torch.Generator().manual_seed(1))
    b = diff.sample(model, x_T.shape, sampler="dpm_solver++", steps=10, noise=x_T, timestep_spacing="linspace",
                    generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="eta"):
        diff.sample(model, x_T.shape, sampler="dpm_solver++", steps=10, eta=0.5)


class Predictors:
    """The exact networks of N(mean_c, s²I) data, class c ∈ {0, 1} in ``cond``, as ε, x0 or v outputs
    (c = −1 or no cond: the network of N(0, s²I), standing in for an unconditional model)."""

    def __init__(self, diffusion, s, means=(1.0, -2.0)):
        self.diffusion, self.s, self.means = diffusion, s, torch.tensor(means)

    def __call__(self, prediction):
        d = self.diffusion

        def model(x_t, t, cond=None):
            abar = d.alphas_cumprod[t].to(x_t.dtype).view(-1, 1)
            mean = torch.zeros_like(x_t[:, :1])  # no class (None, or −1 rows): a zero mean
            if cond is not None:
                mean = torch.where(cond.view(-1, 1) >= 0, self.means[cond.clamp(min=0)].view(-1, 1), 0.0)
            eps = (1 - abar).sqrt() * (x_t - abar.sqrt() * mean) / (abar * self.s**2 + 1 - abar)
            x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
            return {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]
        return model


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_dpm_solver_pp_is_the_same_with_x0_and_v_networks(prediction):
    s = 0.7
    eps_diff, other = GaussianDiffusion(prediction="eps"), GaussianDiffusion(prediction=prediction)
    x_T = torch.randn(300, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    by_eps = eps_diff.sample(Predictors(eps_diff, s)("eps"), x_T.shape, sampler="dpm_solver++", steps=15,
                             noise=x_T, timestep_spacing="logsnr")
    by_other = other.sample(Predictors(other, s)(prediction), x_T.shape, sampler="dpm_solver++", steps=15,
                            noise=x_T, timestep_spacing="logsnr")
    assert torch.allclose(by_eps, by_other, atol=1e-8)
    exact = pf_ode_solution(eps_diff, s, x_T, eps_diff.spaced_timesteps(15, "logsnr"))
    assert float((by_other - exact).norm() / exact.norm()) < 0.05


def test_dpm_solver_pp_takes_classifier_free_guidance_through_the_model_hook():
    """Guidance is applied by ``predict``, the one hook every sampler reads: w = 1 follows the conditional
    flow exactly (x_0 = m + s (x − √ᾱ m)/√(ᾱ s² + 1 − ᾱ)), and w = 3 equals running the solver on the
    hand-combined network ε_u + w (ε_c − ε_u)."""
    s, diff = 0.5, GaussianDiffusion()
    models = Predictors(diff, s)
    cond_model = models("eps")
    x_T = torch.randn(400, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cond = torch.tensor([0, 1]).repeat(200)
    x = diff.sample(cond_model, x_T.shape, sampler="dpm_solver++", steps=20, noise=x_T, cond=cond,
                    timestep_spacing="logsnr")
    abar = float(diff.alphas_cumprod[-1])
    m = models.means[cond].double().view(-1, 1)
    exact = m + s * (x_T - math.sqrt(abar) * m) / math.sqrt(abar * s**2 + 1 - abar)
    assert float((x - exact).norm() / exact.norm()) < 0.03

    w, uncond = 3.0, torch.full_like(cond, -1)

    def combined(x_t, t, c=None):
        e_u = cond_model(x_t, t, None)
        return e_u + w * (cond_model(x_t, t, c) - e_u)

    guided = diff.sample(cond_model, x_T.shape, sampler="dpm_solver++", steps=20, noise=x_T, cond=cond,
                         uncond=uncond, guidance_scale=w)
    by_hand = diff.sample(combined, x_T.shape, sampler="dpm_solver++", steps=20, noise=x_T, cond=cond)
    assert torch.allclose(guided, by_hand, atol=1e-8)
    assert not torch.allclose(guided, x, atol=1e-2)
