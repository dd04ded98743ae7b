"""Editing real images (SDEdit and DDIM inversion to t = strength·T, then regenerating): its two ends, its
exact behaviour on a Gaussian, and sample.py --edit with its clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_end_to_end import cli, runs  # noqa: F401  (runs: the tiny conditional shapes run, a fixture)
from torch import nn

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.latents import LatentNormaliser
from latentdiff.pipeline import LatentDiffusion

MEAN, STD = torch.tensor([1.0, -1.0]), 2.0  # the data: N(MEAN, STD² I), more spread than the noise


class GaussianNoised(nn.Module):
    """The exact ε-network of N(MEAN, STD² I) data: x_t ~ N(√ᾱ MEAN, v I), v = ᾱ STD² + 1 − ᾱ, and
    ε̂ = −√(1−ᾱ) ∇ log p_t(x_t) = √(1−ᾱ) (x_t − √ᾱ MEAN) / v."""

    def __init__(self, diffusion):
        super().__init__()
        self.abar = nn.Parameter(diffusion.alphas_cumprod.float(), requires_grad=False)

    def forward(self, x, t, cond=None):
        abar = self.abar[t][:, None]
        return (1 - abar).sqrt() * (x - abar.sqrt() * MEAN) / (abar * STD**2 + 1 - abar)


def gaussian_ldm(num_timesteps=100):
    # β scaled with 1/T so that ᾱ_T ≈ 5e-5 whatever T, as with T = 1000 and the usual 1e-4..0.02
    diffusion = GaussianDiffusion(num_timesteps, beta_start=0.1 / num_timesteps, beta_end=20 / num_timesteps)
    return LatentDiffusion(diffusion, GaussianNoised(diffusion), None, LatentNormaliser.identity(), (2,))


def image_ldm():
    """A random VAE and UNet: the two ends of ``edit`` hold for any weights."""
    from autoencoders import build_autoencoder
    from latentdiff.nets import UNet

    torch.manual_seed(0)
    ae = build_autoencoder("vae", in_channels=3, image_size=16, base_channels=8, channel_mults=(1, 2),
                           num_res_blocks=1, latent_channels=2).eval()
    denoiser = UNet(in_channels=2, channels=16, channel_mults=(1,), num_res_blocks=1).eval()
    nn.init.normal_(denoiser.out[-1].weight, std=0.1)  # not the zero init: ε̂ must depend on x_t
    return LatentDiffusion(GaussianDiffusion(num_timesteps=50), denoiser, ae, LatentNormaliser.identity(), (2, 8, 8))


@pytest.mark.parametrize("mode", ["sdedit", "invert"])
def test_strength_zero_is_the_reconstruction(mode):
    ldm = image_ldm()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(ldm.edit(images, strength=0.0, mode=mode), ldm.decode(ldm.encode(images)))


def test_strength_one_ignores_the_input():
    ldm = image_ldm()
    a, b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    from_a = ldm.edit(a, strength=1.0, steps=10, noise=noise)
    assert torch.equal(from_a, ldm.edit(b, strength=1.0, steps=10, noise=noise))
    assert torch.allclose(from_a, ldm.sample(2, steps=10, noise=noise), atol=1e-6), "a plain sample"
    assert not torch.allclose(from_a, ldm.edit(a, strength=0.5, steps=10, noise=noise), atol=1e-3)


def test_sdedit_on_gaussian_data_keeps_the_distribution_and_the_exact_correlation():
    """x_t = √ᾱ x0 + √(1−ᾱ) ε, then exact reverse steps draw x0' ~ p(x0 | x_t). For N(m, s²) data the pair
    (x0, x0') is Gaussian with corr = ᾱ s² / (ᾱ s² + 1 − ᾱ) at the start level ᾱ = ᾱ_{⌈strength·T⌉−1}."""
    ldm = gaussian_ldm(num_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x0 = MEAN + STD * torch.randn(4000, 2, generator=g)
    for strength in (0.2, 0.4):  # ᾱ = 0.66, 0.19: corr 0.89, 0.49
        edited = ldm.edit(x0, strength=strength, sampler="ddpm", steps=None, generator=g)
        abar = float(ldm.diffusion.alphas_cumprod[round(strength * 1000) - 1])
        expected = abar * STD**2 / (abar * STD**2 + 1 - abar)
        corr = [float(np.corrcoef(x0[:, i], edited[:, i])[0, 1]) for i in range(2)]
        assert all(abs(c - expected) < 0.03 for c in corr), (strength, corr, expected)
        assert torch.allclose(edited.mean(0), MEAN, atol=0.1), edited.mean(0)
        assert torch.allclose(edited.std(0), torch.full((2,), STD), rtol=0.04), edited.std(0)


def test_invert_mode_without_changes_gives_the_input_back():
    ldm = gaussian_ldm(num_timesteps=1000)
    x0 = MEAN + STD * torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    back = ldm.edit(x0, strength=0.6, mode="invert", steps=ldm.diffusion.num_timesteps)
    # the DDIM round trip's first-order discretisation error: 0.075 with T = 100, 0.0074 with T = 1000
    assert float((back - x0).abs().max()) < 0.015
    sdedit = ldm.edit(x0, strength=0.6, steps=ldm.diffusion.num_timesteps)
    assert float((sdedit - x0).abs().mean()) > 10 * float((back - x0).abs().mean())


def test_invert_mode_regenerates_with_ddim_whatever_the_runs_sampler():
    """The inversion is DDIM's; the way back must be too (a DPM-Solver++ run's default would double the error)."""
    ldm = gaussian_ldm(num_timesteps=1000)
    ldm.config = {"sample": {"sampler": "dpm_solver++", "steps": 50}}
    x0 = MEAN + STD * torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    back = ldm.edit(x0, strength=0.6, mode="invert")
    assert torch.equal(back, ldm.edit(x0, strength=0.6, mode="invert", sampler="ddim", steps=50, eta=0.0))
    solver = ldm.edit(x0, strength=0.6, mode="invert", sampler="dpm_solver++")
    assert float((back - x0).abs().max()) < 0.6 * float((solver - x0).abs().max())  # measured: 0.20 vs 0.41


@pytest.fixture
def photo(tmp_path):
    """A non-square RGB picture, unlike the run's 32×32 data: read_image crops and resizes it."""
    path = tmp_path / "photo.png"
    pixels = np.zeros((40, 50, 3), dtype=np.uint8)
    pixels[10:30, 15:35, 2] = 255  # a blue square on black
    Image.fromarray(pixels).save(path)
    return path


def test_sample_edit_writes_originals_beside_their_edits(runs, photo, tmp_path):  # noqa: F811
    out, _ = runs
    run = out / "shapes_ldm_kl"
    npz = tmp_path / "e.npz"
    cli("sample.py", "--run", run, "--edit", photo, photo, "--attr", "color=red", "--strength", 0.6, "--num", 2,
        "--steps", 4, "--no-progress", "--out", tmp_path / "e.png", "--npz", npz)
    result = np.load(npz)
    assert result["originals"].shape == (2, 3, 32, 32) and result["images"].shape == (4, 3, 32, 32)
    assert (result["attributes"][:, 0] == 0).all()  # red
    from latentdiff.viz import image_grid

    grid = np.asarray(Image.open(tmp_path / "e.png"))
    rows = image_grid(torch.zeros(6, 3, 32, 32), nrow=3)  # one row per image: the original and its two edits
    assert grid.shape[:2] == tuple(rows.shape[1:])
    # strength 0 through the command is the autoencoder's reconstruction of the read-in image
    cli("sample.py", "--run", run, "--edit", photo, "--strength", 0, "--num", 1, "--no-progress",
        "--out", tmp_path / "r.png", "--npz", tmp_path / "r.npz")
    ldm = LatentDiffusion.from_run(run)
    reconstruction = ldm.decode(ldm.encode(ldm.read_image(photo)[None]))
    assert np.allclose(np.load(tmp_path / "r.npz")["images"], reconstruction.numpy(), atol=1e-4)


def test_edit_bad_input_is_one_clear_line(runs, photo, tmp_path):  # noqa: F811
    out, _ = runs
    run = out / "shapes_ldm_kl"
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    for args, words in ((["--edit", tmp_path / "missing.png"], "does not exist"),
                        (["--edit", not_an_image], "cannot read"),
                        (["--edit", photo, "--attr", "colour=blue"], "color"),
                        (["--edit", photo, "--attr", "color=blue", "--classifier"], "train_classifier.py")):
        r = cli("sample.py", "--run", run, *args, "--steps", 2, "--no-progress", "--out", tmp_path / "x.png",
                check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], (args, r.stderr)
