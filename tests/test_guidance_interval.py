"""Guidance in a limited interval of noise levels (Kynkäänniemi et al. 2024): guided exactly where asked."""

import pytest
import torch

from latentdiff.diffusion import GaussianDiffusion


class RecordingDenoiser:
    """ε = 0.1·x + 0.5·cond, recording the timesteps at which it saw a doubled (guided) batch."""

    def __init__(self, batch):
        self.batch, self.guided_at = batch, []

    def __call__(self, x, t, cond=None):
        if x.shape[0] == 2 * self.batch:
            self.guided_at.append(int(t[0]))
        c = torch.zeros_like(x) if cond is None else cond.to(x.dtype).view(-1, 1).expand_as(x)
        return 0.1 * x + 0.5 * c


def run(diffusion, interval, scale=3.0, steps=20, sampler="ddim", eta=0.0):
    model = RecordingDenoiser(4)
    cond, uncond = torch.ones(4), torch.zeros(4)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    x = diffusion.sample(model, (4, 2), sampler=sampler, steps=steps, eta=eta, cond=cond, uncond=uncond,
                         guidance_scale=scale, noise=noise, guidance_interval=interval,
                         generator=torch.Generator().manual_seed(1))
    return x, model.guided_at


def test_guidance_acts_exactly_at_the_levels_inside_the_interval():
    diffusion = GaussianDiffusion(num_timesteps=100)
    _, guided = run(diffusion, (0.2, 0.6), steps=100)
    assert guided == [t for t in range(99, -1, -1) if 0.2 <= (t + 1) / 100 <= 0.6]
    assert len(guided) == 41


def test_the_whole_interval_is_plain_guidance_and_an_empty_one_the_conditional_model():
    diffusion = GaussianDiffusion(num_timesteps=100)
    everywhere, _ = run(diffusion, None)
    assert torch.equal(run(diffusion, (0.0, 1.0))[0], everywhere)
    conditional, _ = run(diffusion, None, scale=1.0)
    # no sampled level has t/T below 0.005, so (0, 0.005) excludes every step
    nowhere, guided = run(diffusion, (0.0, 0.005))
    assert guided == [] and torch.equal(nowhere, conditional)
    assert not torch.allclose(everywhere, conditional)


def test_a_bad_interval_is_refused_before_sampling():
    diffusion = GaussianDiffusion(num_timesteps=10)
    for bad in [(0.6, 0.2), (-0.1, 0.5), (0.2, 1.5), (0.3,)]:
        with pytest.raises(ValueError, match="guidance_interval"):
            run(diffusion, bad, steps=5)


# ----------------------------------------------------------------------------- classifier guidance in the interval


class ConstantGradient:
    """∇ log p(y | x_t) = c everywhere (a linear classifier's), recording the timesteps it was asked at."""

    def __init__(self, c=0.7):
        self.c, self.asked_at = c, []

    def __call__(self, x, t):
        self.asked_at.append(int(t[0]))
        return torch.full_like(x, self.c)


def classifier_run(diffusion, interval, scale=2.0):
    grad = ConstantGradient()
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    x = diffusion.sample(RecordingDenoiser(4), (4, 2), sampler="ddim", steps=20, noise=noise,
                         classifier_guidance=(grad, scale), guidance_interval=interval)
    return x, grad.asked_at


def test_classifier_guidance_acts_exactly_inside_the_interval_and_nowhere_else():
    """Dhariwal & Nichol's ε̂' = ε̂ − √(1 − ᾱ_t) s ∇ log p(y | x_t) where lo ≤ (t+1)/T ≤ hi, ε̂ itself elsewhere."""
    diffusion = GaussianDiffusion(num_timesteps=100)
    visited = diffusion.spaced_timesteps(20).flip(0).tolist()
    _, asked = classifier_run(diffusion, (0.2, 0.6))
    assert asked == [t for t in visited if 0.2 <= (t + 1) / 100 <= 0.6] and len(asked) == 8
    unguided, _ = classifier_run(diffusion, None, scale=0.0)
    nowhere, asked = classifier_run(diffusion, (0.0, 0.005))  # no visited level has (t+1)/T <= 0.005
    assert asked == [] and torch.equal(nowhere, unguided)
    assert not torch.allclose(classifier_run(diffusion, (0.2, 0.6))[0], unguided)
    # one prediction on each side of the interval, against the closed form
    model, x = RecordingDenoiser(4), torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    for t, inside in ((39, True), (79, False)):  # (t+1)/T = 0.4 and 0.8
        t_batch = torch.full((4,), t)
        eps, _ = diffusion.predict(model, x, t_batch)
        guided, _ = diffusion.predict(model, x, t_batch, classifier_guidance=(ConstantGradient(), 2.0),
                                      guidance_interval=(0.2, 0.6))
        shift = float(diffusion.sqrt_one_minus_alphas_cumprod[t]) * 2.0 * 0.7 if inside else 0.0
        assert torch.allclose(guided, eps - shift, rtol=0, atol=1e-6), t
