"""Joint training (train_joint.py, LSGM-style): the bound's estimator against closed forms, and the stage end to end.

The cross-entropy term CE(q ‖ p_θ) is estimated with one timestep (``GaussianDiffusion.bound_estimate``). For a
Gaussian q(z0) = N(m, v) per dimension and the exact ε predictor of data N(0, s²) its expectation is known:
E‖x0 − x̂0‖² = (1 − g√ᾱ)²(v + m²) + g²(1 − ᾱ) with x̂0 = g x_t, g = √ᾱ s² / (ᾱ s² + 1 − ᾱ) (the Wiener filter), which
gives every term of the bound (Ho et al. 2020, Eq. 5). For s = 1 and σ_t² = β_t the reverse process of N(0, I) data
is exact, so the bound equals the analytic cross-entropy ½ log 2π + (v + m²)/2 per dimension.
"""

import json
import math
import shutil

import pytest
import torch
import yaml
from test_diffusion import exact_eps
from test_end_to_end import ROOT, cli, runs  # noqa: F401  (the tiny shapes runs fixture)

from latentdiff.diffusion import GaussianDiffusion


def expected_bound_per_dim(diff, s, m, v):
    """E_q[L] per dimension for q = N(m, v), the exact predictor of N(0, s²), derived from μ̃ − μ_θ = c0 (x0 − x̂0)."""
    abar, betas = diff.alphas_cumprod, diff.betas
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    c0 = abar_prev.sqrt() * betas / (1 - abar)
    sigma2 = betas if diff.variance == "beta" else torch.cat([beta_tilde[1:2], beta_tilde[1:]])
    g = abar.sqrt() * s**2 / (abar * s**2 + 1 - abar)
    err = (1 - g * abar.sqrt()) ** 2 * (v + m**2) + g**2 * (1 - abar)
    kl = 0.5 * (torch.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1) + c0**2 * err / (2 * sigma2)
    decoder = 0.5 * torch.log(2 * math.pi * sigma2[0]) + err[0] / (2 * sigma2[0])
    prior = 0.5 * (-torch.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * (v + m**2) - 1)
    return float(decoder + kl[1:].sum() + prior)


def estimates(diff, s, m, v, importance_sampling, n=100_000, dims=4, seed=0):
    torch.manual_seed(seed)
    z0 = m + math.sqrt(v) * torch.randn(n, dims, dtype=torch.float64)  # draws of q(z0 | x)
    est = diff.bound_estimate(exact_eps(diff, s), z0, importance_sampling=importance_sampling,
                              generator=torch.Generator().manual_seed(seed + 1)) / dims
    return float(est.mean()), float(est.std()) / math.sqrt(n)


@pytest.mark.parametrize("importance_sampling", [True, False])
def test_bound_estimate_is_unbiased_for_the_analytic_cross_entropy_of_gaussian_latents(importance_sampling):
    """σ_t² = β_t, s = 1: the bound is exact, so E[estimate] is the closed-form cross-entropy E_q[−log N(z; 0, I)]."""
    diff = GaussianDiffusion(variance="beta")
    m, v = 0.5, 0.04
    cross_entropy = 0.5 * math.log(2 * math.pi) + (v + m**2) / 2
    assert abs(expected_bound_per_dim(diff, 1.0, m, v) - cross_entropy) < 1e-9  # the closed forms agree
    mean, se = estimates(diff, 1.0, m, v, importance_sampling)
    assert abs(mean - cross_entropy) < 4 * se, (mean, cross_entropy, se)


@pytest.mark.parametrize("schedule", [(200, 5e-4, 0.1), (10, 1e-3, 0.05)], ids=["T200", "T10_short_chain"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("importance_sampling", [True, False])
def test_bound_estimate_matches_the_closed_form_bound_with_beta_tilde_and_other_data(importance_sampling,
                                                                                     prediction, schedule):
    """σ_t² = β̃_t (the recipes' variance), data N(0, 1.5²), q = N(-0.3, 0.2): E[estimate] is the discrete bound.
    The short chain ends far from N(0, I) (ᾱ_T ≈ 0.8), so its L_T is a large part of the bound."""
    T, beta_start, beta_end = schedule
    diff = GaussianDiffusion(num_timesteps=T, beta_start=beta_start, beta_end=beta_end, prediction=prediction)
    s, m, v = 1.5, -0.3, 0.2
    exact = exact_eps(diff, s)
    model = exact if prediction == "eps" else (  # the same predictor, written as v = √ᾱ ε − √(1−ᾱ) x0
        lambda x, t, c=None: diff.velocity(diff.predict_x0_from_eps(x, t, exact(x, t)), exact(x, t), t))
    torch.manual_seed(0)
    z0 = m + math.sqrt(v) * torch.randn(100_000, 3, dtype=torch.float64)
    est = diff.bound_estimate(model, z0, importance_sampling=importance_sampling,
                              generator=torch.Generator().manual_seed(1)) / 3
    mean, se = float(est.mean()), float(est.std()) / math.sqrt(len(est))
    assert abs(mean - expected_bound_per_dim(diff, s, m, v)) < 4 * se, (mean, expected_bound_per_dim(diff, s, m, v))


def test_importance_sampling_cuts_the_estimators_spread_on_normalised_latents():
    """LSGM §3.3: on N(0, I)-like latents, t ~ r ∝ λ_t ᾱ_t gives a far smaller standard error than uniform t."""
    diff = GaussianDiffusion()
    _, se_uniform = estimates(diff, 1.0, 0.0, 0.9, importance_sampling=False, n=20_000)
    _, se_importance = estimates(diff, 1.0, 0.0, 0.9, importance_sampling=True, n=20_000)
    assert se_importance < se_uniform / 5, (se_importance, se_uniform)
    r = diff.importance_distribution()
    assert abs(float(r.sum()) - 1) < 1e-12 and bool((r > 0).all())
    # for t ≥ 2 (σ_t² = β̃_t): r_t ∝ λ_t^ε ᾱ_t = β_t ᾱ_{t−1} / (2 (1 − ᾱ_{t−1})), LSGM's β(1 − σ²)/σ² in discrete time
    abar, betas = diff.alphas_cumprod, diff.betas
    closed = betas[1:] * abar[:-1] / (2 * (1 - abar[:-1]))
    assert torch.allclose(r[1:] / r[1:].sum(), closed / closed.sum(), rtol=1e-10)


def test_bound_estimate_passes_gradients_to_the_latents_and_the_model():
    diff = GaussianDiffusion(num_timesteps=50)
    net = torch.nn.Linear(3, 3)
    z0 = torch.randn(8, 3, requires_grad=True)
    diff.bound_estimate(lambda x, t, c=None: net(x), z0).sum().backward()
    assert z0.grad.abs().sum() > 0 and net.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- the joint task


@pytest.fixture
def joint_parts():
    """A tiny VAE + UNet denoiser as a JointModel, with a normaliser that is not the identity."""
    from autoencoders.models import build_autoencoder
    from latentdiff.builders import build_denoiser
    from latentdiff.config import DenoiserConfig
    from latentdiff.latents import LatentNormaliser
    from latentdiff.tasks import JointModel

    torch.manual_seed(0)
    ae = build_autoencoder("vae", in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                           latent_channels=2)
    denoiser = build_denoiser(DenoiserConfig(kind="unet", channels=16, channel_mults=[1], num_res_blocks=1,
                                             attention_resolutions=[]), tuple(ae.latent_shape), None)
    model = JointModel(ae, denoiser, decoder_variance=0.05)
    normaliser = LatentNormaliser(shift=torch.tensor(0.1), scale=torch.tensor(1.7))
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    return model, GaussianDiffusion(num_timesteps=50), normaliser, images


def test_joint_terms_entropy_is_the_gaussians_and_gradients_reach_encoder_decoder_and_denoiser(joint_parts):
    from latentdiff.tasks import joint_bound_terms

    model, diff, normaliser, x = joint_parts
    terms = joint_bound_terms(model, diff, normaliser, x)
    posterior = model.autoencoder.encode(x)
    reference = torch.distributions.Normal(posterior.mean.double(), posterior.std.double()).entropy().flatten(1).sum(1)
    assert torch.allclose(-terms["neg_entropy"], reference, rtol=1e-6)
    assert torch.allclose(terms["total"], terms["reconstruction"] + terms["neg_entropy"] + terms["cross_entropy"])
    terms["total"].mean().backward()
    for name in ("autoencoder.encoder", "autoencoder.decoder", "denoiser", "decoder_logvar"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name


def test_the_split_keeps_the_bounds_gradient_out_of_the_denoiser(joint_parts):
    from latentdiff.tasks import joint_bound_terms

    model, diff, normaliser, x = joint_parts
    joint_bound_terms(model, diff, normaliser, x, train_denoiser=False)["total"].mean().backward()
    assert all(p.grad is None for p in model.denoiser.parameters())
    assert all(p.requires_grad for p in model.denoiser.parameters())  # restored
    assert model.autoencoder.encoder.conv_in.weight.grad.abs().sum() > 0


def test_cross_entropy_term_is_the_bound_of_normalised_latents_minus_the_log_det(joint_parts):
    """Same draws of z and t: CE(z) = bound_estimate(normalise(z)) − log |det ∂z_n/∂z|."""
    from latentdiff.tasks import joint_bound_terms

    model, diff, normaliser, x = joint_parts
    torch.manual_seed(3)
    terms = joint_bound_terms(model, diff, normaliser, x)
    torch.manual_seed(3)
    z = model.autoencoder.encode(x).sample()
    model.autoencoder.decode(z)  # no random draw, as in joint_bound_terms
    direct = diff.bound_estimate(model.denoiser, normaliser.normalise(z)).double()
    log_det = normaliser.log_det_jacobian(tuple(z.shape[1:]))
    assert log_det != 0
    assert torch.allclose(terms["cross_entropy"], direct - log_det)


def test_after_autoencoder_steps_only_the_denoiser_trains_on_its_stage_two_loss(joint_parts):
    """Before ``autoencoder_steps`` the loss is the bound (bits/dim) and reaches the autoencoder; from it on the loss is
    the denoiser's own ``training_loss`` of normalised z ~ q(z|x), same draws, and no gradient reaches the
    autoencoder or the decoder's variance (so the optimiser leaves them as they are)."""
    from latentdiff.tasks import JointTask

    model, diff, normaliser, x = joint_parts
    with torch.no_grad():  # the UNet's zero-initialised output would make its loss blind to its input
        for p in model.denoiser.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    task = JointTask(model, diff, normaliser, x, x, False, 0.0, 0.0, autoencoder_steps=2)
    attrs = torch.zeros(len(x), 0)
    for step, joint in ((0, True), (1, True), (2, False), (7, False)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(step)
        losses, logs = task.losses((x, attrs), step)
        losses["model"].backward()
        ae_grads = [p.grad for p in model.autoencoder.parameters()] + [model.decoder_logvar.grad]
        assert all(g is not None for g in ae_grads) if joint else all(g is None for g in ae_grads), step
        assert all(p.grad is not None for p in model.denoiser.parameters())
        assert ("bpd" in logs) == joint
        if not joint:
            torch.manual_seed(step)
            with torch.no_grad():
                z_n = normaliser.normalise(model.autoencoder.encode(x).sample())
                reference = diff.training_loss(model.denoiser, z_n)
            assert torch.equal(losses["model"].detach(), reference)


# ----------------------------------------------------------------------------- the stage, end to end

JOINT_TINY = ["train.steps=6", "train.batch_size=16", "train.eval_every=3", "train.image_every=6",
              "train.checkpoint_every=3", "train.warmup_steps=0", "train.lr=1e-3", "joint.eval_examples=16",
              "joint.bound_timesteps=5", "joint.autoencoder_steps=4"]  # the last 2 steps: the stage-two finish


def joint_cli(out, start, *overrides, check=True):
    return cli("train_joint.py", "--config", ROOT / "configs/fashion_mnist/joint_kl.yaml", f"start.run={start}",
               f"out_dir={out}", *JOINT_TINY, *overrides, check=check)


def test_joint_run_lowers_the_bound_resumes_bit_exactly_and_samples_like_a_stage_two_run(runs, tmp_path):  # noqa: F811
    from latentdiff import LatentDiffusion
    from latentdiff.checkpoints import load_checkpoint

    out, _ = runs
    start = out / "shapes_ldm_kl"
    joint_cli(tmp_path, start, "name=whole")
    whole = tmp_path / "whole"
    state = load_checkpoint(whole / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["task"]["joint"]["autoencoder"]["kind"] == "vae"
    config = yaml.safe_load((whole / "config.yaml").read_text())
    assert config["diffusion"] == yaml.safe_load((start / "config.yaml").read_text())["diffusion"]
    # stopped at 3 and continued after its start run was deleted: the same weights, bit for bit
    copy = tmp_path / "start_copy"
    shutil.copytree(start, copy)
    first = joint_cli(tmp_path, copy, "name=halves", "train.steps=3")
    assert "note: joint.autoencoder_steps=4 is not below train.steps=3: the autoencoder trains to the end" in \
        first.stderr  # said, and kept: step 4 is where the longer run below freezes it
    shutil.rmtree(copy)
    resumed = joint_cli(tmp_path, copy, "name=halves")
    assert "is gone; resuming on this run's own checkpoint" in resumed.stderr
    halves = load_checkpoint(tmp_path / "halves" / "checkpoints" / "last.pt")
    for key, value in state["model"].items():
        assert torch.equal(value, halves["model"][key]), key
    # a run folder like any stage two: sampled from the joint weights, exported, reloaded
    ldm = LatentDiffusion.from_run(whole)
    weights = state["ema"]["module"]
    assert torch.equal(ldm.autoencoder.decoder.conv_out.weight, weights["autoencoder.decoder.conv_out.weight"])
    start_ldm = LatentDiffusion.from_run(start)
    assert not torch.equal(ldm.autoencoder.decoder.conv_out.weight, start_ldm.autoencoder.decoder.conv_out.weight)
    images = ldm.sample(4, generator=torch.Generator().manual_seed(0), steps=3)
    ldm.save_pretrained(tmp_path / "exported")
    again = LatentDiffusion.from_pretrained(tmp_path / "exported").sample(4, generator=torch.Generator().manual_seed(0),
                                                                         steps=3)
    assert torch.equal(images, again)
    # and an export handed on is a start too
    joint_cli(tmp_path, tmp_path / "exported", "name=from_export", "train.steps=2")
    assert load_checkpoint(tmp_path / "from_export" / "checkpoints" / "last.pt")["step"] == 2


def held_out_bound(run) -> float:
    """The two-stage bound (bits/dim, every timestep exact) of a run on 16 held-out images, fixed draws."""
    from latentdiff import LatentDiffusion
    from latentdiff.builders import build_data
    from latentdiff.config import DataConfig, from_dict
    from latentdiff.tasks import JointModel, JointTask

    ldm = LatentDiffusion.from_run(run)
    test = build_data(from_dict(DataConfig, ldm.config["data"]), "test")
    images = torch.stack([test[i][0] for i in range(32)])
    model = JointModel(ldm.autoencoder, ldm.denoiser, decoder_variance=1.0)
    task = JointTask(model, ldm.diffusion, ldm.normaliser, images[:16], images[16:], False, 0.0, 0.0,
                     bound_timesteps=None)
    return task.evaluate(model, 0)["bpd"]


def test_joint_training_lowers_the_held_out_bound_of_its_start(runs, tmp_path):  # noqa: F811
    """30 steps at lr 1e-3 from the tiny shapes run: the exact held-out bound (same images, same draws) drops."""
    out, _ = runs
    joint_cli(tmp_path, out / "shapes_ldm_kl", "name=longer", "train.steps=30", "train.eval_every=30",
              "train.ema_decay=null", "joint.autoencoder_steps=null")
    before, after = held_out_bound(out / "shapes_ldm_kl"), held_out_bound(tmp_path / "longer")
    assert after < before - 0.05, (before, after)


def test_joint_runs_are_refused_in_one_line_before_any_work(runs, tmp_path):  # noqa: F811
    out, _ = runs
    for overrides, message in (([f"start.run={tmp_path / 'nowhere'}"], "start.run"),
                               (["train.guide_at=0.5"], "train.guide_at"),
                               ([f"start.run={out / 'shapes_ae_kl'}"], "not a train_diffusion.py run")):
        r = cli("train_joint.py", "--config", ROOT / "configs/fashion_mnist/joint_kl.yaml",
                f"start.run={out / 'shapes_ldm_kl'}", f"out_dir={tmp_path}", *overrides, check=False)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "fashion_mnist_joint_kl").exists()


def test_the_recipe_is_the_measured_joint_run_and_its_comment_the_measured_finish():
    """configs/fashion_mnist/joint_kl.yaml trains what bench/joint_training.py measured as (c) at 30 minutes from the
    class-conditional start (its steps, joint to the end), and its comment names the (c'') step counts measured from
    the unconditional one."""
    text = (ROOT / "configs/fashion_mnist/joint_kl.yaml").read_text()
    recipe = yaml.safe_load(text)
    results = ROOT / "bench/results"
    cond = json.loads((results / "joint_training_vae_ldm_cond_guide0.25.json").read_text())
    uncond = json.loads((results / "joint_training_vae_ldm_uncond_guide0.25.json").read_text())
    assert recipe["joint"]["autoencoder_steps"] is None
    assert recipe["train"]["steps"] == cond["steps"]["joint_main"]["30.0"]
    finish = uncond["steps"]["finish"]["30.0"]
    assert f"joint.autoencoder_steps={finish['autoencoder_steps']} train.steps={finish['steps']}" in text
    for record in (cond, uncond):
        assert record["settings"]["joint_recipe"].endswith("configs/fashion_mnist/joint_kl.yaml")


def test_the_configs_defaults_are_the_recipes():
    """The Python API (JointRunConfig()) and the recipe train the same run, start.run and name aside."""
    from latentdiff.config import JointRunConfig, load_config, to_dict

    recipe = to_dict(load_config(JointRunConfig, ROOT / "configs/fashion_mnist/joint_kl.yaml", []))
    default = to_dict(JointRunConfig())
    for section in ("joint", "train"):
        assert recipe[section] == default[section], section
