"""LatentDiffusion.sampling_settings on the run's own ``sample:`` section: its steps never exceed the chain's T."""

import torch
from torch import nn

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.latents import LatentNormaliser
from latentdiff.pipeline import LatentDiffusion

T = 20


class CountingZero(nn.Module):
    """ε̂ = 0, recording the timestep of every call."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # LatentDiffusion.device reads it
        self.t = []

    def forward(self, x, t, cond=None):
        self.t.append(int(t[0]))
        return torch.zeros_like(x)


def tiny_ldm(sample: dict) -> LatentDiffusion:
    return LatentDiffusion(GaussianDiffusion(T), CountingZero(), None, LatentNormaliser.identity(), (2,),
                           config={"sample": sample})


def test_the_runs_own_steps_are_clamped_to_the_chain_and_the_sampler_runs_exactly_that_many():
    for sampler in ("ddim", "ddpm", "dpm_solver++"):
        for run_steps, expected in ((5 * T, T), (T + 1, T), (T, T), (7, 7)):
            ldm = tiny_ldm({"sampler": sampler, "steps": run_steps})
            assert ldm.sampling_settings()["steps"] == expected, (sampler, run_steps)
            ldm.sample_latents(3, generator=torch.Generator().manual_seed(0))
            assert len(ldm.denoiser.t) == expected, (sampler, run_steps)
            assert ldm.denoiser.t == ldm.diffusion.spaced_timesteps(expected).flip(0).tolist()


def test_the_runs_full_chain_is_all_T_steps():
    ldm = tiny_ldm({"sampler": "ddpm", "steps": None})
    assert ldm.sampling_settings()["steps"] in (None, T)  # None: all T, as GaussianDiffusion.sample reads it
    ldm.sample_latents(3, generator=torch.Generator().manual_seed(0))
    assert ldm.denoiser.t == list(range(T - 1, -1, -1))
