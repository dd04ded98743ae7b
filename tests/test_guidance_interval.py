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
