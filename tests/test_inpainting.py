"""Inpainting (RePaint, Lugmayr et al. 2022) in latent space: known cells kept exactly, the fill distributed as the
exact conditional of Gaussian data (closer with resampling jumps), the pixel-to-latent mask rule, paste-back, and
sample.py --inpaint with its one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_editing import image_ldm
from test_end_to_end import cli, runs  # noqa: F401  (runs: the tiny conditional shapes run, a fixture)
from torch import nn

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.latents import LatentNormaliser
from latentdiff.pipeline import LatentDiffusion


class ExactGaussian(nn.Module):
    """The exact ε-network of N(0, Σ) data: x_t ~ N(0, ᾱΣ + (1−ᾱ)I), ε̂ = √(1−ᾱ) (ᾱΣ + (1−ᾱ)I)⁻¹ x_t."""

    def __init__(self, diffusion, cov):
        super().__init__()
        self.abar, self.cov = diffusion.alphas_cumprod, cov.double()
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # LatentDiffusion.device reads it

    def forward(self, x, t, cond=None):
        abar = self.abar[t].view(-1, 1, 1)
        cov_t = abar * self.cov + (1 - abar) * torch.eye(len(self.cov), dtype=torch.float64)
        eps = (1 - abar.view(-1, 1)).sqrt() * torch.linalg.solve(cov_t, x.double().unsqueeze(-1)).squeeze(-1)
        return eps.to(x.dtype)


def gaussian_ldm(cov, T=100):
    diffusion = GaussianDiffusion(T, beta_start=0.1 / T, beta_end=20 / T)  # ᾱ_T ≈ 5e-5 as with T = 1000
    return LatentDiffusion(diffusion, ExactGaussian(diffusion, cov), None, LatentNormaliser.identity(),
                           (len(cov),))


def draw(cov, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(cov), generator=g) @ torch.linalg.cholesky(cov).T


def slope_and_residual(known, filled):
    """Least-squares slope of filled on known, and the variance left: ρ and s²(1 − ρ²) for the exact conditional."""
    slope = float(((known - known.mean()) * (filled - filled.mean())).mean() / known.var())
    return slope, float((filled - slope * known).var())


@pytest.mark.parametrize("sampler,eta,resample", [("ddpm", 0.0, 1), ("ddpm", 0.0, 3), ("ddim", 0.0, 1),
                                                  ("ddim", 1.0, 2), ("dpm_solver++", 0.0, 1)])
def test_known_cells_end_exactly_equal_to_the_known_data(sampler, eta, resample):
    cov = torch.eye(3)
    ldm = gaussian_ldm(cov)
    x0 = draw(cov, 64)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    out = ldm.diffusion.sample(ldm.denoiser, x0.shape, sampler=sampler, steps=10, eta=eta, known=(x0, mask),
                               resample=resample, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out[:, [0, 2]], x0[:, [0, 2]])
    assert not torch.allclose(out[:, 1], x0[:, 1], atol=0.1)
    via_pipeline = ldm.inpaint(x0, mask, sampler=sampler, steps=10, eta=eta, resample=resample, paste_back=False)
    assert torch.equal(via_pipeline[:, [0, 2]], x0[:, [0, 2]])


def test_known_cells_are_fresh_draws_of_the_forward_process_at_every_level():
    """At each level ᾱ_t of the chain the known cells are √ᾱ_t x0 + √(1 − ᾱ_t) ε with fresh ε (Ho et al. Eq. 4):
    standardised, they are N(0, 1) and independent from one step to the next."""
    cov = torch.eye(2)
    ldm = gaussian_ldm(cov)
    x0 = draw(cov, 4000)
    known = (x0, torch.tensor([[1.0, 0.0]]))
    _, traj = ldm.diffusion.sample(ldm.denoiser, x0.shape, sampler="ddim", steps=10, known=known,
                                   return_trajectory=True, generator=torch.Generator().manual_seed(3))
    abar = ldm.diffusion.alphas_cumprod[traj["t"]].float()
    noise = (traj["x_t"][:, :, 0] - abar.sqrt()[:, None] * x0[:, 0]) / (1 - abar).sqrt()[:, None]  # (steps, n)
    assert torch.allclose(noise.std(1), torch.ones(10), atol=0.05), noise.std(1)
    assert abs(float(np.corrcoef(noise[4], noise[5])[0, 1])) < 0.05


def test_with_independent_coordinates_the_fill_is_the_marginal_whatever_is_known():
    """N(0, s²I): the exact conditional of the unknown coordinate is its marginal N(0, s²), uncorrelated with
    the known one (the exact ε̂ of each coordinate depends on that coordinate alone)."""
    s = 2.0
    cov = s**2 * torch.eye(2)
    ldm = gaussian_ldm(cov)
    x0 = draw(cov, 4000)
    out = ldm.inpaint(x0, torch.tensor([[1.0, 0.0]]), sampler="ddpm", steps=None,
                      generator=torch.Generator().manual_seed(1))
    filled = out[:, 1]
    assert abs(float(filled.mean())) < 0.1  # standard error 0.03
    assert float(filled.var()) == pytest.approx(s**2, rel=0.06)  # standard error 2.2 %
    assert abs(float(np.corrcoef(x0[:, 0], filled)[0, 1])) < 0.05  # standard error 0.016


def test_with_correlated_coordinates_resampling_approaches_the_conditional():
    """N(0, Σ), Σ = [[1, ρ], [ρ, 1]], first coordinate known: the exact conditional mean of the second is ρ·known.
    Replacement alone (R = 1) under-uses the known value; RePaint's jumps approach ρ. Measured on 4000 draws,
    DDPM over all T = 100 steps, ρ = 0.8: slope 0.50 (R = 1), 0.62 (2), 0.72 (5), 0.77 (10); standard error 0.01.
    (The residual variance is then 0.28 against the conditional's 0.36: RePaint's chain is not exactly the
    conditional either.)"""
    rho = 0.8
    cov = torch.tensor([[1.0, rho], [rho, 1.0]])
    ldm = gaussian_ldm(cov)
    x0 = draw(cov, 4000)
    mask = torch.tensor([[1.0, 0.0]])
    slopes = {}
    for resample in (1, 10):
        out = ldm.inpaint(x0, mask, sampler="ddpm", steps=None, resample=resample,
                          generator=torch.Generator().manual_seed(2))
        slopes[resample], _ = slope_and_residual(out[:, 0], out[:, 1])
    assert abs(slopes[10] - rho) < 0.07, slopes
    assert abs(slopes[1] - rho) > 0.2, slopes
    assert abs(slopes[10] - rho) < abs(slopes[1] - rho) / 3, slopes


def test_a_latent_cell_is_known_only_if_all_its_pixels_are():
    ldm = image_ldm()  # 16×16 images, 8×8 latents: each cell covers 2×2 pixels
    mask = torch.ones(1, 1, 16, 16)
    mask[0, 0, 5, 7] = 0  # one pixel of the cell (2, 3)
    mask[0, 0, 10:14, 0:4] = 0  # the cells (5..6, 0..1) whole
    cells = ldm.latent_mask(mask, (2, 3, 16, 16))
    expected = torch.ones(1, 1, 8, 8)
    expected[0, 0, 2, 3] = 0
    expected[0, 0, 5:7, 0:2] = 0
    assert torch.equal(cells, expected)
    per_image = torch.stack([mask[0], torch.ones(1, 16, 16)])  # (B, 1, H, W) masks too
    assert torch.equal(ldm.latent_mask(per_image, (2, 3, 16, 16))[1], torch.ones(1, 8, 8))


def test_paste_back_keeps_the_kept_pixels_exactly():
    ldm = image_ldm()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 8:] = 0  # fill the right half
    kw = dict(sampler="ddim", steps=3, eta=0.0, generator=torch.Generator().manual_seed(0))
    pasted = ldm.inpaint(images, mask, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    raw = ldm.inpaint(images, mask, paste_back=False, **kw)
    keep = mask.bool().expand_as(images)
    assert torch.equal(pasted[keep], images[keep])
    assert torch.equal(pasted[~keep], raw[~keep])
    assert not torch.allclose(raw[keep], images[keep], atol=1e-3)  # the decoder alone does not keep them


def test_bad_inpainting_input_is_one_clear_line():
    ldm = image_ldm()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    good = torch.ones(1, 1, 16, 16)
    for kw, words in (({"mask": torch.ones(1, 1, 8, 8)}, "mask must be"),
                      ({"mask": torch.ones(3, 1, 16, 16)}, "mask must be"),
                      ({"mask": torch.full((1, 1, 16, 16), 0.5)}, "only 0"),
                      ({"mask": good, "sampler": "ddim", "eta": 0.0, "resample": 3}, "stochastic"),
                      ({"mask": good, "sampler": "dpm_solver++", "resample": 2}, "stochastic"),
                      ({"mask": good, "sampler": "ddpm", "resample": 0}, "resample")):
        with pytest.raises(ValueError, match=words) as err:
            ldm.inpaint(images, steps=2, **kw)
        assert "\n" not in str(err.value)
    diff = GaussianDiffusion(10)
    with pytest.raises(ValueError, match="inpainting only"):
        diff.sample(lambda x, t, c=None: torch.zeros_like(x), (2, 2), resample=2)
    with pytest.raises(ValueError, match="broadcast"):
        diff.sample(lambda x, t, c=None: torch.zeros_like(x), (2, 2), known=(torch.zeros(2, 2), torch.ones(3)))


@pytest.fixture
def picture_and_masks(tmp_path):
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[8:24, 4:20, 0] = 255  # a red square on black
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    right_half = np.full((32, 32), 255, dtype=np.uint8)
    right_half[:, 16:] = 0
    Image.fromarray(right_half).save(tmp_path / "mask.png")
    Image.fromarray(right_half[:16, :16]).save(tmp_path / "small.png")
    (tmp_path / "notes.png").write_text("hello")
    return tmp_path


def test_sample_inpaint_keeps_the_masked_in_pixels_and_writes_rows(runs, picture_and_masks):  # noqa: F811
    out, _ = runs
    d = picture_and_masks
    run = out / "shapes_ldm_kl"
    cli("sample.py", "--run", run, "--inpaint", d / "photo.png", "--mask", d / "mask.png", "--num", 2, "--steps", 3,
        "--sampler", "ddpm", "--resample", 2, "--no-progress", "--out", d / "i.png", "--npz", d / "i.npz")
    result = np.load(d / "i.npz")
    assert result["images"].shape == (2, 3, 32, 32) and result["mask"].shape == (1, 1, 32, 32)
    kept = np.broadcast_to(result["mask"].astype(bool), result["images"].shape)
    originals = np.broadcast_to(result["originals"], result["images"].shape)
    assert np.array_equal(result["images"][kept], originals[kept])  # paste-back
    from latentdiff.viz import image_grid

    one_row = image_grid(torch.zeros(4, 3, 32, 32), nrow=4)  # the original, its kept part, the two fills
    assert np.asarray(Image.open(d / "i.png")).shape[:2] == tuple(one_row.shape[1:])


def test_sample_inpaint_bad_input_is_one_clear_line(runs, picture_and_masks):  # noqa: F811
    out, _ = runs
    d = picture_and_masks
    run = out / "shapes_ldm_kl"
    for args, words in ((["--mask", d / "small.png"], "16×16 pixels"),
                        (["--mask", d / "notes.png"], "cannot read"),
                        (["--mask", d / "missing.png"], "does not exist"),
                        (["--mask", d / "mask.png", "--sampler", "ddim", "--eta", 0, "--resample", 2], "stochastic"),
                        ([], "--mask")):
        r = cli("sample.py", "--run", run, "--inpaint", d / "photo.png", *args, "--steps", 2, "--no-progress",
                "--out", d / "x.png", check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], (args, r.stderr)
    r = cli("sample.py", "--run", run, "--resample", 2, "--no-progress", "--out", d / "x.png", check=False)
    assert r.returncode == 2 and "--inpaint" in r.stderr


# ----------------------------------------------------------------------------- the RePaint loop, value by value


class RecordingZero:
    """ε̂ = 0, recording the timestep and a copy of the state of every call."""

    def __init__(self):
        self.t, self.x = [], []

    def __call__(self, x, t, cond=None):
        self.t.append(int(t[0]))
        self.x.append(x.clone())
        return torch.zeros_like(x)


def test_the_known_cells_are_replaced_already_at_x_T():
    """Before the first step the known cells are q(x_{T−1} | x0_known) = √ᾱ x0 + √(1 − ᾱ) z, z the generator's first
    draw (Lugmayr et al. 2022, Algorithm 1 line 5 at t = T); the unknown cells are the given x_T untouched."""
    diffusion = GaussianDiffusion(10)  # ᾱ_{T−1} ≈ 0.9: the known data shows in x_T
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    model = RecordingZero()
    _, traj = diffusion.sample(model, (3, 4), sampler="ddim", steps=5, noise=noise, known=(x0, mask),
                               return_trajectory=True, generator=torch.Generator().manual_seed(5))
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    expected = diffusion.q_sample(x0, torch.full((3,), 9), z)
    assert int(traj["t"][0]) == 9 and model.t[0] == 9
    for first in (traj["x_t"][0], model.x[0]):  # what the trajectory records and what the network saw
        assert torch.allclose(first[:, [0, 2]], expected[:, [0, 2]], rtol=0, atol=1e-6), (first, expected)
        assert torch.equal(first[:, [1, 3]], noise[:, [1, 3]])


def test_the_resample_jump_is_the_forward_step_from_s_to_t():
    """x_t = √(ᾱ_t/ᾱ_s) x_s + √(1 − ᾱ_t/ᾱ_s) z (Ho et al. Eq. 2 over the respaced step), z the generator's draw."""
    from latentdiff.samplers import forward_jump

    x_s = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    abar_s, abar_t = 0.9, 0.6
    out = forward_jump(x_s, abar_s, abar_t, torch.Generator().manual_seed(1))
    z = torch.randn(2000, 4, generator=torch.Generator().manual_seed(1))
    ratio = abar_t / abar_s
    assert torch.allclose(out, ratio**0.5 * x_s + (1 - ratio) ** 0.5 * z, rtol=0, atol=1e-6)
    # x_s ~ N(0, 1): x_t ~ N(0, ratio + 1 − ratio) = N(0, 1); √(1 − ᾱ_t) would give 1.07 (standard error 0.016)
    assert float(out.var()) == pytest.approx(1.0, abs=0.05)


def test_with_everything_known_every_state_the_network_sees_is_the_forward_marginal_jumps_included():
    """All cells known, x0 = 0: after every step the state is q(x_s | 0) = N(0, (1 − ᾱ_s) I) and a jump back gives
    N(0, ᾱ_t/ᾱ_s (1 − ᾱ_s) + 1 − ᾱ_t/ᾱ_s) = N(0, 1 − ᾱ_t): every call of the network sees variance 1 − ᾱ_t.
    (A jump with √(1 − ᾱ_t) would add ᾱ_t/ᾱ_s (1 − ᾱ_s): about 1.8× the variance at the first steps of T = 10.)"""
    diffusion = GaussianDiffusion(10)
    x0 = torch.zeros(4000, 4)
    model = RecordingZero()
    diffusion.sample(model, x0.shape, sampler="ddpm", known=(x0, torch.ones(1, 4)), resample=2,
                     generator=torch.Generator().manual_seed(6))
    assert model.t == [t for t in range(9, 0, -1) for _ in range(2)] + [0]
    abar = diffusion.alphas_cumprod
    for t, x in zip(model.t, model.x):
        assert float(x.var()) == pytest.approx(1 - float(abar[t]), rel=0.05), t  # standard error 1.1 %


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_resampling_redoes_every_step_but_the_last_exactly_R_times(sampler, eta):
    """S steps with R tries: (S − 1) R network calls, then one for the last step (it lands on x0_known)."""
    diffusion = GaussianDiffusion(20)
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    visited = diffusion.spaced_timesteps(5).flip(0).tolist()
    for resample in (1, 3):
        model = RecordingZero()
        diffusion.sample(model, x0.shape, sampler=sampler, eta=eta, steps=5, known=(x0, torch.tensor([[1.0, 0, 0]])),
                         resample=resample, generator=torch.Generator().manual_seed(1))
        assert model.t == [t for t in visited[:-1] for _ in range(resample)] + [visited[-1]], (resample, model.t)
        assert len(model.t) == 4 * resample + 1
