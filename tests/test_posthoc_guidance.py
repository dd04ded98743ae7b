"""Post-hoc classifier guidance of an unconditional model: exact on a Gaussian mixture, and end to end with a
noise-conditional classifier trained by train_classifier.py on a tiny shapes run."""

import math

import numpy as np
import pytest
import torch
from test_end_to_end import ROOT, cli
from torch import nn

from latentdiff.data import AttributeSchema
from latentdiff.diffusion import GaussianDiffusion
from latentdiff.guidance import classifier_grad_log_prob
from latentdiff.latents import LatentNormaliser
from latentdiff.pipeline import LatentDiffusion

SEPARATION = 1.0  # component means (∓SEPARATION, 0); unit variance, so the classes overlap


def mixture_diffusion():
    # T = 100 with β scaled up so ᾱ_T ≈ 5e-5, as T = 1000 with the usual 1e-4..0.02
    return GaussianDiffusion(num_timesteps=100, beta_start=1e-3, beta_end=0.2)


class MixtureNoised(nn.Module):
    """The exact noised two-component mixture: x_t | k ~ N(√ᾱ_t μ_k, I) (unit variance stays unit).

    ``eps(x_t, t)`` = −√(1−ᾱ_t) ∇ log p_t(x_t) (the ideal ε-network), ``classify(x_t, t)`` = [log p(k | x_t)
    up to a constant] as a one-head list, the exact noise-conditional classifier.
    """

    def __init__(self, diffusion):
        super().__init__()
        self.abar = diffusion.alphas_cumprod.float()
        self.means = nn.Parameter(torch.tensor([[-SEPARATION, 0.0], [SEPARATION, 0.0]]), requires_grad=False)

    def logits(self, x, t):
        centres = self.abar[t].sqrt()[:, None, None] * self.means[None]  # (B, 2, 2)
        return -0.5 * ((x[:, None] - centres) ** 2).sum(-1)

    def forward(self, x, t, cond=None):  # ε̂
        r = torch.softmax(self.logits(x, t), dim=1)
        centres = self.abar[t].sqrt()[:, None, None] * self.means[None]
        score = -(x - (r[..., None] * centres).sum(1))
        return -(1 - self.abar[t]).sqrt()[:, None] * score


class MixtureClassifier(nn.Module):
    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x, t):
        return [self.mixture.logits(x, t)]


def mixture_ldm():
    diffusion = mixture_diffusion()
    mixture = MixtureNoised(diffusion)
    schema = AttributeSchema(["component"], [["left", "right"]])
    ldm = LatentDiffusion(diffusion, mixture, None, LatentNormaliser.identity(), (2,), schema=schema)
    return ldm, MixtureClassifier(mixture)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_one_with_exact_scores_samples_the_class_conditional(sampler):
    """ε̂ − √(1−ᾱ) ∇ log p(y|x_t) is exactly −√(1−ᾱ) ∇ log p_t(x_t | y): samples follow N(μ_y, I)."""
    ldm, classifier = mixture_ldm()
    n, g = 4000, torch.Generator().manual_seed(0)
    steps = None if sampler == "ddpm" else 50
    free = ldm.sample(n, sampler=sampler, steps=steps, generator=g)
    right = ldm.sample(n, attrs={"component": "right"}, classifier=classifier, classifier_scale=1.0,
                       sampler=sampler, steps=steps, generator=g)
    assert abs(float(free[:, 0].mean())) < 0.1 and abs(float(free[:, 0].std()) - math.sqrt(2)) < 0.1
    assert torch.allclose(right.mean(0), torch.tensor([SEPARATION, 0.0]), atol=0.08), right.mean(0)
    assert torch.allclose(right.std(0), torch.ones(2), atol=0.08), right.std(0)
    # the share of samples on the asked side: Φ(1) ≈ 0.84 at s = 1, more at s = 4, vs 1/2 unguided
    stronger = ldm.sample(n, attrs={"component": "right"}, classifier=classifier, classifier_scale=4.0,
                          sampler=sampler, steps=steps, generator=g)
    shares = [float((x[:, 0] > 0).float().mean()) for x in (free, right, stronger)]
    assert abs(shares[0] - 0.5) < 0.04 and abs(shares[1] - 0.841) < 0.04 and shares[2] > 0.95, shares


def test_scale_zero_is_the_unguided_sampler_bit_for_bit():
    ldm, classifier = mixture_ldm()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    runs = []
    for kw in ({}, {"attrs": {"component": "left"}, "classifier": classifier, "classifier_scale": 0.0}):
        runs.append(ldm.sample(64, sampler="ddpm", steps=None, noise=noise, generator=torch.Generator().manual_seed(2),
                               **kw))
    assert torch.equal(runs[0], runs[1])


def test_attributes_not_asked_for_are_not_guided():
    torch.manual_seed(0)
    heads = [nn.Linear(3, 4), nn.Linear(3, 2)]

    def two_heads(x, t):
        return [h(x) for h in heads]

    def first_only(x, t):
        return heads[0](x)

    x, t = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    y = torch.randint(0, 4, (5,))
    both_free = torch.full((5, 2), -1)
    second_free = torch.stack([y, torch.full_like(y, -1)], 1)
    expected = classifier_grad_log_prob(first_only, y)(x, t)
    assert torch.allclose(classifier_grad_log_prob(two_heads, second_free)(x, t), expected)
    assert torch.equal(classifier_grad_log_prob(two_heads, both_free)(x, t), torch.zeros_like(x))
    # the gradient of Σ log softmax: a finite-difference check of one coordinate
    e = torch.zeros_like(x)
    e[2, 1] = 1e-3
    with torch.no_grad():
        logp = [torch.log_softmax(heads[0](z), 1).gather(1, y[:, None]).sum() for z in (x + e, x - e)]
    assert abs(float((logp[0] - logp[1]) / 2e-3) - float(expected[2, 1])) < 1e-3
    with pytest.raises(ValueError, match="heads"):
        classifier_grad_log_prob(two_heads, y)(x, t)


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory):
    """A tiny unconditional shapes run on a deterministic AE (its latents show the attributes at once) and a
    classifier trained on its latents."""
    out = tmp_path_factory.mktemp("posthoc")
    cli("train_ae.py", "--config", ROOT / "configs/shapes/ae_rae.yaml", f"out_dir={out}", "name=ae",
        "train.steps=12", "data.train_size=256", "data.test_size=64", "eval_samples=32", "train.batch_size=32",
        "train.eval_every=12", "train.image_every=12", "model.base_channels=16")
    cli("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_rae.yaml", f"out_dir={out}",
        f"ae.run={out / 'ae'}", "name=uncond", "conditioning.enabled=false", "train.steps=12",
        "data.train_size=256", "data.test_size=64", "bound_examples=16", "train.batch_size=32",
        "train.eval_every=12", "train.image_every=12", "bound_every=12", "sample.num=4", "sample.steps=2",
        "denoiser.channels=32")
    cli("train_classifier.py", "--run", out / "uncond", "train.steps=500", "train.batch_size=64", "train.lr=3e-3",
        "train.warmup_steps=10", "train.eval_every=500", "train.log_every=100", "model.width=32", "eval_examples=64")
    return out / "uncond"


def test_trained_noise_conditional_classifier_beats_chance_where_noise_is_low(uncond_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from latentdiff.data import build_dataset

    assert (uncond_run / "classifier" / "checkpoints" / "last.pt").exists()
    assert (uncond_run / "classifier" / "config.yaml").exists()
    acc = EventAccumulator(str(uncond_run / "classifier" / "tb"))
    acc.Reload()
    scalar = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    labels = build_dataset("shapes", "test", size=64).attributes
    names = ["color", "size", "shape"]
    chance = [float(np.bincount(labels[:, i].numpy()).max()) / len(labels) for i in range(3)]  # the majority guess
    low_noise = [scalar[f"eval/accuracy/{name}/t_q1"] for name in names]
    assert sum(low_noise) / 3 > sum(chance) / 3 + 0.2, (low_noise, chance)
    assert all(f"eval/accuracy/{name}/t_q4" in scalar for name in names), "accuracy per quarter of t"


def test_sample_with_classifier_guidance_and_its_clear_errors(uncond_run, tmp_path):
    npz = tmp_path / "s.npz"
    cli("sample.py", "--run", uncond_run, "--classifier", "--classifier-scale", 3, "--attr", "color=red", "--num", 3,
        "--steps", 3, "--no-progress", "--out", tmp_path / "s.png", "--npz", npz)
    out = np.load(npz)
    assert out["images"].shape == (3, 3, 32, 32) and (out["attributes"][:, 0] == 0).all()
    # the same seed without guidance gives other images: the gradient reached the sampler
    cli("sample.py", "--run", uncond_run, "--num", 3, "--steps", 3, "--no-progress", "--out", tmp_path / "u.png",
        "--npz", tmp_path / "u.npz")
    assert not np.allclose(np.load(tmp_path / "u.npz")["images"], out["images"])
    for args, words in ((["--classifier", tmp_path, "--attr", "color=red"], "train_classifier.py"),
                        (["--classifier"], "--attr"),
                        (["--classifier-scale", 2, "--attr", "color=red"], "--classifier")):
        r = cli("sample.py", "--run", uncond_run, *args, "--num", 2, "--steps", 2, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr


def test_a_classifier_of_another_latent_space_is_refused(uncond_run):
    from latentdiff.checkpoints import CheckpointError

    ldm = LatentDiffusion.from_run(uncond_run)
    ldm.load_classifier(uncond_run / "classifier")  # its own run: fine
    ldm.normaliser = LatentNormaliser(ldm.normaliser.shift, ldm.normaliser.scale * 2)
    with pytest.raises(CheckpointError, match="another run"):
        ldm.load_classifier(uncond_run / "classifier")
