"""Autoguidance (Karras et al. 2024): D = G + w_a (D − G), alone and on top of classifier-free guidance.

With exact ε predictors of Gaussian data the guided prediction is linear in x_t, so the probability-flow ODE
it drives has a closed-form end: for a main model of data N(0, s²) and a guide of N(0, s_g²), in DDIM's
variables x̄ = x/√ᾱ and σ = √((1−ᾱ)/ᾱ) the ODE is dx̄/dσ = ε̂ = [w σ/(s²+σ²) + (1−w) σ/(s_g²+σ²)] x̄, whose
solution from σ_T down to 0 is

    x0 = x_T/√ᾱ_T · (s²/(s²+σ_T²))^{w/2} · (s_g²/(s_g²+σ_T²))^{(1−w)/2},

a Gaussian of standard deviation ≈ s^w s_g^{1−w} (σ_T ≫ s): extrapolating away from a broader guide sharpens.
"""

import math

import pytest
import torch
from test_diffusion import exact_eps, random_model

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.guidance import guided_output

SAMPLER_KW = {"ddpm": {}, "ddim": {"eta": 0.0}, "dpm_solver++": {}}


def x_T(shape=(4, 3)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def never_called(x_t, t, cond=None):
    raise AssertionError("the guide was called")


def test_the_combination_is_cfg_plus_autoguidance_with_weights_summing_to_one():
    """Constant 'networks': D_c = 1, D_u = 3 (the same model, asked two conditions), G_c = 7."""
    def model(x_t, t, cond):
        return torch.where(cond[:, None] == 1, 1.0, 3.0).expand_as(x_t)

    def guide(x_t, t, cond):
        return torch.full_like(x_t, 7.0)

    x, t = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    cond, uncond = torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    for w, w_a in [(1.0, 2.0), (2.5, 1.0), (2.5, 2.0), (0.0, 3.0)]:
        out = guided_output(model, x, t, cond, uncond, w, guide, w_a)
        assert torch.equal(out, torch.full_like(x, 1 + (w - 1) * (1 - 3) + (w_a - 1) * (1 - 7))), (w, w_a)
    assert torch.equal(guided_output(model, x, t, cond, None, 1.0, guide, 2.0), torch.full_like(x, 7 + 2 * (1 - 7)))


@pytest.mark.parametrize("sampler", list(SAMPLER_KW))
def test_a_guide_equal_to_the_model_gives_exactly_the_unguided_samples(sampler):
    diff = GaussianDiffusion(num_timesteps=50, beta_start=1e-3, beta_end=0.1)
    model = random_model(3)
    kw = {"shape": (4, 3), "sampler": sampler, "steps": 10, "noise": x_T(), **SAMPLER_KW[sampler]}
    plain = diff.sample(model, generator=torch.Generator().manual_seed(1), **kw)
    guided = diff.sample(model, generator=torch.Generator().manual_seed(1), autoguidance=(model, 2.5), **kw)
    assert torch.equal(plain, guided)


@pytest.mark.parametrize("sampler", list(SAMPLER_KW))
def test_weight_one_is_the_main_model_and_never_calls_the_guide(sampler):
    diff = GaussianDiffusion(num_timesteps=50, beta_start=1e-3, beta_end=0.1)
    model = random_model(3)
    kw = {"shape": (4, 3), "sampler": sampler, "steps": 10, "noise": x_T(), **SAMPLER_KW[sampler]}
    plain = diff.sample(model, generator=torch.Generator().manual_seed(1), **kw)
    guided = diff.sample(model, generator=torch.Generator().manual_seed(1), autoguidance=(never_called, 1.0), **kw)
    assert torch.equal(plain, guided)


def closed_form_end(diff, s, s_guide, w):
    """x0 for x_T = 1 under the autoguided probability-flow ODE (the module docstring's solution)."""
    abar_T = float(diff.alphas_cumprod[-1])
    sigma2 = (1 - abar_T) / abar_T
    return (1 / math.sqrt(abar_T)) * (s**2 / (s**2 + sigma2)) ** (w / 2) * \
        (s_guide**2 / (s_guide**2 + sigma2)) ** ((1 - w) / 2)


# DDIM is first order (0.2-0.35 % off at T steps), DPM-Solver++(2M) second order (1e-4 at 200 log-SNR steps)
@pytest.mark.parametrize("sampler,steps,rtol", [("ddim", 1000, 5e-3), ("dpm_solver++", 200, 5e-4)])
@pytest.mark.parametrize("w", [1.0, 2.0, 3.0])
def test_autoguided_ode_of_two_exact_gaussian_predictors_ends_at_the_closed_form(sampler, steps, rtol, w):
    """Main: data N(0, 1); guide: N(0, 1.5²). Everything is linear, so one start x_T = 1 gives the map's slope,
    the end's standard deviation: ≈ 1.5^{1−w} (0.67 at w = 2), far from the unguided 1."""
    diff = GaussianDiffusion(num_timesteps=1000)
    s, s_guide = 1.0, 1.5
    x_T = torch.ones(1, 1, dtype=torch.float64)
    end = diff.sample(exact_eps(diff, s), x_T.shape, sampler=sampler, steps=steps, noise=x_T,
                      timestep_spacing="logsnr" if sampler == "dpm_solver++" else None,
                      autoguidance=(exact_eps(diff, s_guide), w))
    expected = closed_form_end(diff, s, s_guide, w)
    assert float(end) == pytest.approx(expected, rel=rtol)
    if w != 1.0:
        assert abs(expected - 1.0) > 0.3  # the guide matters at this w: a dropped or flipped term cannot pass


def test_autoguidance_acts_only_inside_the_guidance_interval():
    """Like classifier guidance, the guide is consulted only where lo ≤ (t+1)/T ≤ hi, and nowhere else."""
    diff = GaussianDiffusion(num_timesteps=100, beta_start=1e-3, beta_end=0.05)
    model = random_model(2)
    seen = []

    def guide(x_t, t, cond=None):
        seen.append(int(t[0]))
        return model(x_t, t) * 0.5

    diff.sample(model, (3, 2), sampler="ddim", steps=20, noise=x_T((3, 2)), autoguidance=(guide, 2.0),
                guidance_interval=(0.0, 0.4))
    assert seen and all((t + 1) / 100 <= 0.4 for t in seen)
    visited = diff.spaced_timesteps(20).tolist()
    assert sorted(seen) == [t for t in visited if (t + 1) / 100 <= 0.4]


# -- through LatentDiffusion: the run's default, the refusals, the bundle -----------------------------------


class Exact(torch.nn.Module):
    """The exact ε predictor of N(0, s²) data as a module (LatentDiffusion reads the device off a parameter)."""

    def __init__(self, diffusion, s):
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(float(s), dtype=torch.float64), requires_grad=False)
        self.diffusion = diffusion

    def forward(self, x_t, t, cond=None):
        return exact_eps(self.diffusion, self.s)(x_t, t, cond)


def gaussian_ldm(sample: dict, guide_s=None):
    from latentdiff.latents import LatentNormaliser
    from latentdiff.pipeline import LatentDiffusion

    diff = GaussianDiffusion(num_timesteps=1000)
    guide = Exact(diff, guide_s) if guide_s is not None else None
    return LatentDiffusion(diff, Exact(diff, 1.0), None, LatentNormaliser.identity(), (3,),
                           config={"sample": {"sampler": "ddim", "steps": 1000, **sample}}, guide=guide)


def test_the_runs_autoguidance_scale_is_the_default_and_ends_at_the_closed_form():
    """sample.autoguidance_scale: 2 in the run's config and nothing passed: the samples end at the closed form of
    the module docstring (main N(0, 1), guide N(0, 1.5²)), not at the unguided one; passing 1 turns it off."""
    ldm = gaussian_ldm({"autoguidance_scale": 2.0}, guide_s=1.5)
    noise = x_T((4, 3))
    assert ldm.sampling_settings()["autoguidance_scale"] == 2.0
    guided = ldm.sample(4, noise=noise)
    plain = ldm.sample(4, noise=noise, autoguidance_scale=1.0)
    assert torch.allclose(guided, noise * closed_form_end(ldm.diffusion, 1.0, 1.5, 2.0), rtol=5e-3)
    assert torch.allclose(plain, noise * closed_form_end(ldm.diffusion, 1.0, 1.5, 1.0), rtol=5e-3)


def test_autoguidance_without_a_guide_is_refused_not_ignored():
    with pytest.raises(ValueError, match=r"autoguidance_scale=2 \(--autoguidance\): this model has no guide"):
        gaussian_ldm({}).sample(2, autoguidance_scale=2.0)
    with pytest.raises(ValueError, match="no guide"):
        gaussian_ldm({"autoguidance_scale": 1.5}).sampling_settings()
    assert gaussian_ldm({}).sampling_settings()["autoguidance_scale"] == 1.0  # off by default, no guide needed


def test_an_unconditional_runs_autoguidance_is_limited_by_an_interval_given_and_such_an_interval_needs_it():
    """On an unconditional run an interval given limits its autoguidance, as the diffusion's own sampler does; the
    sample: section's interval (the classifier-free guidance's of a shared recipe) is not applied unasked; without
    autoguidance an interval has nothing to limit and is refused."""
    ldm = gaussian_ldm({"guidance_interval": [0.0, 0.6]}, guide_s=1.5)
    noise = x_T((4, 3))
    everywhere = ldm.sample(4, noise=noise, autoguidance_scale=2.0)
    assert torch.allclose(everywhere, noise * closed_form_end(ldm.diffusion, 1.0, 1.5, 2.0), rtol=5e-3)
    assert torch.equal(ldm.sample(4, noise=noise, autoguidance_scale=2.0, guidance_interval=(0.0, 1.0)), everywhere)
    limited = ldm.sample(4, noise=noise, autoguidance_scale=2.0, guidance_interval=(0.0, 0.6))
    direct = ldm.diffusion.sample(ldm.denoiser, (4, 3), sampler="ddim", steps=1000, noise=noise,
                                  autoguidance=(ldm.guide, 2.0), guidance_interval=(0.0, 0.6))
    assert torch.allclose(limited, direct, rtol=1e-6)
    plain = noise * closed_form_end(ldm.diffusion, 1.0, 1.5, 1.0)
    assert (limited - plain).abs().min() > 1e-3 and (limited - everywhere).abs().min() > 1e-3  # neither end
    assert ldm.sampling_settings(autoguidance_scale=2.0)["guidance_interval"] is None
    with pytest.raises(ValueError, match=r"guidance_interval=\(0.0, 0.6\) \(--guidance-interval\): .*autoguidance "
                                         r"is off \(w_a = 1\)"):
        ldm.sample(4, noise=noise, guidance_interval=(0.0, 0.6))
