"""The glue around the maths, each against an exact expectation: one-line breaks here used to pass every test.

Each test names the break it guards (issue 16): the decoder skipping the denormalisation, a per-element
"channel" normaliser, training without condition dropout, a CFG batch whose unconditional half is not
"unspecified", k-NN radii counting the point itself, a resume that forgets ``best``, DDPM noising its
last step, and ``train.lr`` losing its lower bound.
"""

import math
import os
import signal

import pytest
import torch
from conftest import ToyTask, toy_dataset
from torch import nn

from latentdiff.checkpoints import load_checkpoint
from latentdiff.conditioning import UNSPECIFIED, ConditionalDenoiser
from latentdiff.config import ConfigError, LDMRunConfig, TrainConfig, load_config, to_dict
from latentdiff.diffusion import GaussianDiffusion
from latentdiff.latents import LatentNormaliser, fit_normaliser
from latentdiff.metrics.distribution import knn_radii, precision_recall
from latentdiff.pipeline import LatentDiffusion
from latentdiff.tasks import DiffusionTask
from latentdiff.training import train

# ----------------------------------------------------------------------------- latent space: normaliser


class _Mode:
    def __init__(self, z):
        self.z = z

    def mode(self):
        return self.z


class IdentityAE(nn.Module):
    """encode(x).mode() = x, decode(z) = z: whatever the pipeline does to latents shows in the images."""

    def encode(self, x):
        return _Mode(x)

    def decode(self, z):
        return z


def _ldm(normaliser, denoiser=None, latent_shape=(2, 1, 2)):
    denoiser = denoiser or nn.Linear(1, 1)  # only its device is read
    diff = GaussianDiffusion(num_timesteps=10)
    return LatentDiffusion(diff, denoiser, IdentityAE(), normaliser, latent_shape)


def test_decode_undoes_the_normalisation_exactly():
    # z_n = (z - 1) * 3, so decoding z_n must give z_n / 3 + 1 (the decoder here is the identity).
    ldm = _ldm(LatentNormaliser(torch.tensor(1.0), torch.tensor(3.0)))
    z_n = torch.tensor([-3.0, -4.5, -1.5, -6.0]).view(1, 2, 1, 2)
    assert torch.equal(ldm.decode(z_n), torch.tensor([0.0, -0.5, 0.5, -1.0]).view(1, 2, 1, 2))
    x = torch.tensor([0.25, -0.5, 0.75, 1.0]).view(1, 2, 1, 2)
    assert torch.equal(ldm.encode(x), (x - 1) * 3)
    assert torch.allclose(ldm.decode(ldm.encode(x)), x)


def test_channel_normaliser_has_one_shift_and_scale_per_channel():
    # Within each channel the pattern p has mean 0 and variance 1 over (N, H, W), but not per position:
    # per-channel statistics are exactly (shift, std); per-element ones would be (C, H, W) and other values.
    p = torch.tensor([[1.0, 3.0], [-1.0, -3.0]]) / math.sqrt(5.0)  # (N=2, W=2)
    shift, std = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    z = shift.view(1, 2, 1, 1) + std.view(1, 2, 1, 1) * p.view(2, 1, 1, 2)  # (2, 2, 1, 2)
    norm = fit_normaliser(z.double(), None, "channel")
    assert norm.shift.shape == (2,) and norm.scale.shape == (2,)
    assert torch.allclose(norm.shift, shift, atol=1e-6)
    assert torch.allclose(norm.scale, 1 / std, atol=1e-6)
    # log|det| counts each channel's log-scale once per spatial position: 2 · (log 1/3 + log 2)
    assert norm.log_det_jacobian((2, 1, 2)) == pytest.approx(2 * (math.log(1 / 3) + math.log(2)), abs=1e-6)


# ----------------------------------------------------------------------------- conditions the denoiser sees


class RecordingNet(nn.Module):
    """A denoiser that records every condition it is given and predicts ε = 0."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, t, cond=None):
        self.seen.append(None if cond is None else cond.clone())
        return torch.zeros_like(x) + 0 * self.weight


class RecordingConditional(ConditionalDenoiser):
    """The attribute wrapper, recording the (B, A) attribute indices before they are embedded."""

    def __init__(self, num_values):
        super().__init__(RecordingNet(), num_values, dim=4)
        self.seen = []

    def forward(self, x_t, t, cond=None):
        self.seen.append(None if cond is None else cond.clone())
        return torch.zeros_like(x_t) + 0 * self.net.weight


@pytest.mark.parametrize("p_attr,p_all,expected", [(0.0, 1.0, "all unspecified"), (1.0, 0.0, "all unspecified"),
                                                   (0.0, 0.0, "as given")])
def test_training_drops_conditions_at_the_configured_rates(p_attr, p_all, expected):
    model = RecordingNet()
    task = DiffusionTask(GaussianDiffusion(num_timesteps=10), model, LatentNormaliser.identity(),
                         heldout=torch.zeros(2, 3), from_cache=False, conditional=True,
                         drop_attribute_prob=p_attr, drop_all_prob=p_all)
    attrs = torch.tensor([[0, 1], [2, 0], [1, 1], [0, 0]])
    task.losses((torch.randn(4, 3), attrs), step=0)
    (seen,) = model.seen
    if expected == "as given":
        assert torch.equal(seen, attrs)
    else:
        assert torch.equal(seen, torch.full_like(attrs, UNSPECIFIED))


def test_cfg_contrasts_the_asked_attributes_with_all_unspecified():
    denoiser = RecordingConditional([3, 2])
    ldm = _ldm(LatentNormaliser.identity(), denoiser, latent_shape=(3,))
    attrs = torch.tensor([[1, 0], [2, UNSPECIFIED]])
    ldm.sample_latents(2, attrs=attrs, guidance_scale=3.0, sampler="ddim", steps=2)
    assert len(denoiser.seen) == 2  # one batched pass per step
    for cond in denoiser.seen:
        assert torch.equal(cond, torch.cat([attrs, torch.full_like(attrs, UNSPECIFIED)]))
    # w = 1 is the conditional model alone: one un-doubled pass with the attributes
    denoiser.seen.clear()
    ldm.sample_latents(2, attrs=attrs, guidance_scale=1.0, sampler="ddim", steps=2)
    assert all(torch.equal(c, attrs) for c in denoiser.seen)


# ----------------------------------------------------------------------------- precision / recall


def test_knn_radii_exclude_the_point_itself():
    x = torch.tensor([0.0, 1.0, 3.0, 7.0, 15.0]).view(-1, 1)
    assert torch.equal(knn_radii(x, k=1), torch.tensor([1.0, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64))
    assert torch.equal(knn_radii(x, k=2), torch.tensor([3.0, 2.0, 3.0, 6.0, 12.0], dtype=torch.float64))


def test_precision_and_recall_of_hand_made_sets():
    real = torch.tensor([0.0, 1.0, 3.0, 7.0, 15.0]).view(-1, 1)  # k = 1 radii 1, 1, 2, 4, 8
    fake = torch.tensor([2.5, 5.0, 40.0, 41.0]).view(-1, 1)  # k = 1 radii 2.5, 2.5, 1, 1
    pr = precision_recall(real, fake, k=1)
    # fake inside the real balls: 2.5 (ball of 3), 5.0 (ball of 3: |5-3| = 2 ≤ 2); 40 and 41 outside
    assert pr["precision"] == 0.5
    # real inside the fake balls B(2.5, 2.5) ∪ B(5, 2.5) ∪ B(40, 1) ∪ B(41, 1): 1, 3, 7 (0 at 2.5 is inside too)
    assert pr["recall"] == 0.8


# ----------------------------------------------------------------------------- resume keeps best


class ScheduledTask(ToyTask):
    """val_mse fixed by step (best 1.0 at step 4, every other evaluation worse); SIGINT in step ``interrupt_at``."""

    def __init__(self, values, interrupt_at=None):
        super().__init__()
        self.values, self.interrupt_at = values, interrupt_at

    def losses(self, batch, step):
        if step == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().losses(batch, step)

    def evaluate(self, model, step):
        return {"val_mse": self.values.get(step, 9.0)}  # 9: any other evaluation (e.g. at a stop)


def test_resume_keeps_the_best_metric_and_best_pt(tmp_path):
    c = TrainConfig(steps=12, batch_size=16, lr=1e-3, log_every=4, eval_every=4, image_every=100,
                    checkpoint_every=100)
    values = {4: 1.0, 8: 5.0, 12: 3.0}

    def go(task):
        return train(task, toy_dataset(), c, tmp_path / "r", {"train": to_dict(c)}, "cpu", resume=False,
                     argv=["x"])

    first = go(ScheduledTask(values, interrupt_at=5))
    assert first.stop_reason == "SIGINT" and first.best == 1.0
    resumed = go(ScheduledTask(values))
    assert resumed.step == 12
    assert resumed.best == 1.0  # 5.0 and 3.0 are worse than the best before the interruption
    best = load_checkpoint(tmp_path / "r/checkpoints/best.pt")
    assert best["step"] == 4 and best["best"] == 1.0


# ----------------------------------------------------------------------------- DDPM's last step


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("steps", [None, 3])
def test_ddpm_last_step_returns_the_x0_prediction_without_noise(variance, steps):
    diff = GaussianDiffusion(num_timesteps=20, variance=variance)

    def model(x, t, cond=None):  # ε̂ = 0.5 x_t: any fixed predictor will do
        return 0.5 * x

    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    out, traj = diff.sample(model, noise.shape, sampler="ddpm", steps=steps, noise=noise,
                            generator=torch.Generator().manual_seed(1), return_trajectory=True)
    assert int(traj["t"][-1]) == 0
    assert torch.equal(out, traj["x0_pred"][-1])  # no σ z after the last step, whatever the variance
    # and the last x̂0 is exact: x̂0 = (x_t − √(1−ᾱ) ε̂) / √ᾱ at t = 0
    a = float(diff.alphas_cumprod[0])
    x_t = traj["x_t"][-1]
    assert torch.allclose(out, (x_t - math.sqrt(1 - a) * 0.5 * x_t) / math.sqrt(a), atol=1e-6)


# ----------------------------------------------------------------------------- config bounds


@pytest.mark.parametrize("override", ["train.lr=-0.001", "train.weight_decay=-1", "train.batch_size=0"])
def test_negative_learning_rate_and_friends_are_rejected(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(LDMRunConfig, None, [override])
