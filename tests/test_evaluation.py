"""Evaluation: Fréchet distance and precision/recall against closed forms, the likelihood bounds against
exact Gaussian models, the judge's metrics, the GMM baseline, and evaluate.py on a tiny run."""

import json
import math

import numpy as np
import pytest
import torch
from test_diffusion import exact_eps
from test_end_to_end import ROOT, cli, runs  # noqa: F401  (runs: the tiny two-stage fixture)

from autoencoders.models import DiagonalGaussian
from latentdiff.data import AttributeSchema
from latentdiff.diffusion import GaussianDiffusion
from latentdiff.latents import LatentNormaliser
from latentdiff.metrics.classifier import DomainClassifier, attribute_accuracy, diversity_by_value
from latentdiff.metrics.distribution import (
    frechet_distance,
    frechet_distance_from_statistics,
    mean_pairwise_distance,
    precision_recall,
)
from latentdiff.metrics.likelihood import (
    diffusion_latent_nll,
    fit_decoder_variance,
    gaussian_decoder_nll,
    gaussian_entropy,
    standard_normal_nll,
    vae_bound,
)


# -- Fréchet distance ---------------------------------------------------------------------------------------
def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x[torch.randperm(500)]) < 1e-9


def test_frechet_distance_equals_the_closed_form_for_two_gaussians():
    # In 2-D, tr √(C_a C_b) = √(tr(C_a C_b) + 2 √(det C_a det C_b)) (both eigenvalues of C_a C_b are ≥ 0, and
    # √λ1 + √λ2 squared is λ1 + λ2 + 2√(λ1 λ2)): an independent form, valid for non-commuting covariances.
    f64 = {"dtype": torch.float64}
    mean_a, mean_b = torch.tensor([1.0, -2.0], **f64), torch.tensor([0.5, 0.5], **f64)
    cov_a = torch.tensor([[2.0, 0.8], [0.8, 1.0]], **f64)
    cov_b = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], **f64)
    trace_sqrt = math.sqrt(float(torch.trace(cov_a @ cov_b)) + 2 * math.sqrt(float(cov_a.det() * cov_b.det())))
    expected = float((mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace()) - 2 * trace_sqrt
    assert abs(frechet_distance_from_statistics(mean_a, cov_a, mean_b, cov_b) - expected) < 1e-10
    # the same from samples, whose fitted Gaussians converge to these
    g = torch.Generator().manual_seed(1)
    a = mean_a + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_a).T
    b = mean_b + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_b).T
    assert abs(frechet_distance(a, b) - expected) < 0.02 * expected


# -- precision and recall (Kynkäänniemi et al. 2019) --------------------------------------------------------
def test_precision_recall_of_identical_sets_is_one_and_of_disjoint_sets_zero():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 5, generator=g)
    assert precision_recall(real, real.clone(), k=3) == {"precision": 1.0, "recall": 1.0}
    far = torch.randn(300, 5, generator=g) + 100.0
    assert precision_recall(real, far, k=3) == {"precision": 0.0, "recall": 0.0}
    # half the fake set real points, half far away: exactly half of it lies on the real manifold
    mixed = torch.cat([real[:150], real[:150] + 100.0])
    assert precision_recall(real, mixed, k=3)["precision"] == 0.5


def test_mean_pairwise_distance_of_a_square():
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert abs(mean_pairwise_distance(square, chunk=3) - (4 + 2 * math.sqrt(2)) / 6) < 1e-12


# -- the judge's attribute metrics -------------------------------------------------------------------------
def test_attribute_accuracy_and_diversity_count_what_they_should():
    schema = AttributeSchema(["color", "shape"], [["red", "blue"], ["square", "circle", "triangle"]])
    target = torch.tensor([[0, 0], [0, 1], [1, 2], [1, -1]])
    predicted = torch.tensor([[0, 0], [0, 2], [1, 2], [0, 1]])
    acc = attribute_accuracy(predicted, target, schema)
    assert acc == {"color": 0.75, "shape": 2 / 3, "joint": 0.5}  # row 4 judged on color only
    feats = torch.tensor([[0.0], [3.0], [0.0], [1.0]])
    groups = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0]])
    div = diversity_by_value(feats, predicted, groups, schema)
    red = div["color"]["values"]["red"]  # rows 1-3: shapes predicted square, triangle, triangle
    p = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    assert abs(red["other_entropy"]["shape"] - float(-(p * p.log()).sum()) / math.log(3)) < 1e-12
    assert abs(red["pairwise_distance"] - (3 + 0 + 3) / 3) < 1e-12
    assert "blue" not in div["color"]["values"]  # one image: no pairs


def test_domain_classifier_features_and_heads_have_the_documented_shapes():
    model = DomainClassifier(3, [6, 2, 3], width=8, feature_dim=16)
    feats, predicted = model.judge(torch.rand(5, 3, 32, 32) * 2 - 1, batch_size=2)
    assert feats.shape == (5, 16) and predicted.shape == (5, 3)
    assert bool((predicted < torch.tensor([6, 2, 3])).all())


def test_inception_fd_without_local_weights_is_one_line_and_the_code_path_runs(tmp_path, monkeypatch):
    from latentdiff.metrics.inception import InceptionUnavailable, inception_features, load_inception

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty torch cache
    with pytest.raises(InceptionUnavailable) as err:
        load_inception()
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    model = load_inception(pretrained=False)  # random weights: the resize, greyscale and pooling path
    assert inception_features(model, torch.rand(1, 1, 16, 16) * 2 - 1).shape == (1, 2048)


# -- likelihood --------------------------------------------------------------------------------------------
def test_dequantised_decoder_nll_is_the_monte_carlo_expectation_over_the_bin():
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (4, 1, 3, 3), generator=g)
    x = k / 127.5 - 1  # 8-bit values in [-1, 1]
    mean, var, bin_width = x + 0.05 * torch.randn(x.shape, generator=g), 0.01, 2 / 255
    u = torch.rand(20000, *x.shape, generator=g, dtype=torch.float64)
    x_tilde = x.double() + (u - 0.5) * bin_width  # uniform dequantisation inside each value's bin
    density = torch.distributions.Normal(mean.double(), math.sqrt(var))
    mc = -density.log_prob(x_tilde).flatten(2).sum(2).mean(0) - 9 * math.log(bin_width)
    assert torch.allclose(gaussian_decoder_nll(x, mean, var, bin_width), mc, atol=2e-3)
    continuous = -density.log_prob(x.double()).flatten(1).sum(1)
    assert torch.allclose(gaussian_decoder_nll(x, mean, var, None), continuous)
    # the fitted variance maximises the expected dequantised likelihood
    best = fit_decoder_variance(x, mean, bin_width)
    nll = [float(gaussian_decoder_nll(x, mean, v, bin_width).sum()) for v in (0.9 * best, best, 1.1 * best)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    assert abs(best - float(((x_tilde - mean.double()) ** 2).mean())) < 1e-3 * best


def test_standard_normal_prior_bits_per_dim_has_its_closed_form():
    # E_{z~N(0,I)}[−log N(z; 0, I)] = ½ log(2πe) nats per dimension
    z = torch.randn(100_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bpd = float(standard_normal_nll(z).mean()) / (4 * math.log(2))
    assert abs(bpd - 0.5 * math.log2(2 * math.pi * math.e)) < 0.005


class LinearGaussianVAE(torch.nn.Module):
    """z ~ N(0, c²), x | z ~ N(b z, σ²) per dimension, with its exact posterior as the encoder:
    q(z|x) = N(v b x / σ², v), 1/v = 1/c² + b²/σ². Then p(x) = N(0, b²c² + σ²) exactly."""

    def __init__(self, b, c, sigma):
        super().__init__()
        self.b, self.c, self.sigma = b, c, sigma
        self.post_var = 1 / (1 / c**2 + b**2 / sigma**2)

    def encode(self, x):
        mean = self.post_var * self.b * x / self.sigma**2
        return DiagonalGaussian(mean, torch.full_like(x, math.log(self.post_var)))

    def decode(self, z):
        return self.b * z


def test_vae_bound_with_the_standard_prior_is_reconstruction_plus_the_closed_form_kl():
    g = torch.Generator().manual_seed(0)
    vae = LinearGaussianVAE(b=2.0, c=1.0, sigma=0.5)
    x = torch.randn(4000, 3, generator=g, dtype=torch.float64) * math.sqrt(4 + 0.25)
    bound = vae_bound(vae, x, standard_normal_nll, vae.sigma**2, draws=4, bin_width=None, generator=g)
    kl = vae.encode(x).kl()  # ½ Σ (μ² + σ² − 1 − log σ²), the closed form in autoencoders.models
    gap = bound["neg_entropy"] + bound["latent_prior"] - kl
    assert abs(float(gap.mean())) < 4 * float(gap.std()) / math.sqrt(len(gap))
    assert torch.allclose(bound["neg_entropy"], -gaussian_entropy(vae.encode(x).logvar))
    assert torch.allclose(bound["total"], bound["reconstruction"] + bound["neg_entropy"] + bound["latent_prior"])
    # the true prior is N(0, 1) and the encoder the exact posterior: the ELBO is −log p(x) in expectation
    exact = 0.5 * (math.log(2 * math.pi * 4.25) + x**2 / 4.25).sum(1)
    gap = bound["total"] - exact
    assert abs(float(gap.mean())) < 4 * float(gap.std()) / math.sqrt(len(gap))


def test_two_stage_bound_with_an_exact_diffusion_prior_and_normaliser_is_the_exact_nll():
    # latents z ~ N(0, c²) with c = 3; the normaliser's scale 1/c makes z_n ~ N(0, I), whose exact ε predictor
    # with σ_t² = β_t makes the diffusion's reverse process the true one, so its bound is −log N(z_n) in
    # expectation; with the Jacobian −log|det| = D log c it is −log N(z; 0, c²), and the ELBO −log p(x).
    torch.manual_seed(0)
    b, c, sigma = 0.5, 3.0, 0.4
    vae = LinearGaussianVAE(b, c, sigma)
    x = torch.randn(3000, 2, dtype=torch.float64) * math.sqrt(b**2 * c**2 + sigma**2)
    diffusion = GaussianDiffusion(num_timesteps=100, beta_start=1e-3, beta_end=0.2, variance="beta")
    normaliser = LatentNormaliser(torch.tensor(0.0), torch.tensor(1 / c))
    prior = diffusion_latent_nll(diffusion, exact_eps(diffusion, 1.0), normaliser, batch_t=100)
    bound = vae_bound(vae, x, prior, sigma**2, bin_width=None)
    exact = 0.5 * (math.log(2 * math.pi * (b**2 * c**2 + sigma**2)) + x**2 / (b**2 * c**2 + sigma**2)).sum(1)
    gap = bound["total"] - exact
    se = float(gap.std()) / math.sqrt(len(gap))
    assert abs(float(gap.mean())) < 4 * se, (float(gap.mean()), se)
    assert se < 0.5 * 2 * math.log(c)  # a wrong-signed Jacobian (off by 2 D log c = 4.4 nats) would show
    # the prior piece alone: −log N(z; 0, c²) in expectation over z ~ q
    z = vae.encode(x).sample()
    gap = prior(z) - 0.5 * (math.log(2 * math.pi * c**2) + z**2 / c**2).sum(1)
    assert abs(float(gap.mean())) < 4 * float(gap.std()) / math.sqrt(len(gap))


# -- the GMM baseline (Ghosh et al. 2020) ------------------------------------------------------------------
def test_gmm_baseline_recovers_two_clusters_samples_and_decodes():
    pytest.importorskip("sklearn")
    from autoencoders import build_autoencoder
    from latentdiff.baselines import GaussianMixturePrior

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [-4.0, 2.0, 0.0]]).view(2, 3, 1, 1)
    latents = centres[torch.arange(2000) % 2] + 0.5 * torch.randn(2000, 3, 1, 1, generator=g)
    gmm = GaussianMixturePrior(latents, components=2, seed=0)
    z = gmm.sample(1000, seed=1)
    assert z.shape == (1000, 3, 1, 1) and gmm.converged
    first = z[:, 0, 0, 0] > 0
    assert 0.4 < float(first.float().mean()) < 0.6  # equal weights, and shuffled: both halves mixed
    assert torch.allclose(z[first].mean(0), centres[0], atol=0.15)
    assert torch.allclose(z[~first].mean(0), centres[1], atol=0.15)
    # its density is the mixture's: compare with the exact one at the centres (σ = 0.5, weights ½)
    exact = -math.log(0.5) + 1.5 * math.log(2 * math.pi * 0.25)
    assert abs(float(gmm.nll(centres[:1])) - exact) < 0.1
    vae = build_autoencoder("vae", in_channels=1, image_size=8, base_channels=4, channel_mults=(1, 2),
                            latent_channels=3)
    codes = GaussianMixturePrior(torch.randn(64, *vae.latent_shape, generator=g), components=2).sample(5)
    images = vae.decode(codes)
    assert images.shape == (5, 1, 8, 8) and torch.isfinite(images).all()


# -- evaluate.py on a tiny run -----------------------------------------------------------------------------
EVAL_TINY = ["--num", 16, "--steps", 3, "--bound-examples", 8, "--bound-timesteps", 4, "--classifier-steps", 3,
             "--gmm-components", 2, "--gmm-fit-examples", 48, "--batch-size", 8, "--no-progress"]
TINY_OPTIONS = dict(num=16, steps=3, bound_examples=8, bound_timesteps=4, classifier_steps=3, gmm_components=2,
                    gmm_fit_examples=48, batch_size=8, no_progress=True)  # the same, through the library


def test_evaluate_writes_the_documented_json_for_a_diffusion_and_an_autoencoder_run(runs, tmp_path):  # noqa: F811
    pytest.importorskip("sklearn")
    out, _ = runs
    from latentdiff.evaluation import EvalOptions, evaluate_run, finite

    result = evaluate_run(EvalOptions(run=str(out / "shapes_ldm_kl"), out=str(tmp_path / "ldm.json"), **TINY_OPTIONS))
    saved = json.loads((tmp_path / "ldm.json").read_text())
    assert saved == json.loads(json.dumps(finite(result)))
    assert {"run", "stage", "dataset", "autoencoder", "settings", "judge", "reconstruction", "likelihood",
            "samples", "notes"} <= set(saved)
    assert saved["stage"] == "diffusion" and saved["autoencoder"] == "vae"
    assert list(saved["samples"]) == ["data", "reconstructions", "ldm", "ldm_conditional", "ldm_drawn_attributes",
                                      "prior", "gmm"]
    for metrics in saved["samples"].values():
        assert {"fd", "precision", "recall", "fd_inception", "value_entropy", "diversity"} <= set(metrics)
        assert metrics["count"] == 16 and metrics["fd"] >= 0 and 0 <= metrics["precision"] <= 1
    assert set(saved["samples"]["ldm_conditional"]["attribute_accuracy"]) == {"color", "size", "shape", "joint"}
    assert set(saved["judge"]["test_accuracy"]) == {"color", "size", "shape", "joint"}
    like = saved["likelihood"]
    assert {"latent_bpd", "bpd", "bpd_standard_prior", "bpd_gmm_prior", "decoder_variance"} <= set(like)
    terms = like["terms"]
    assert abs(terms["reconstruction"] + terms["neg_entropy"] + terms["latent_prior"] - terms["total"]) < 1e-6
    assert {"mse", "psnr", "ssim", "lpips"} <= set(saved["reconstruction"])

    # an outside set (--samples) holding exactly the floor images scores exactly like the floor
    import yaml

    from latentdiff.builders import build_data
    from latentdiff.config import DataConfig, from_dict

    data_cfg = yaml.safe_load((out / "shapes_ae_kl" / "config.yaml").read_text())["data"]
    test_set = build_data(from_dict(DataConfig, data_cfg), "test")
    floor = torch.stack([test_set[i][0] for i in range(16, 32)]).numpy()
    np.savez(tmp_path / "copy.npz", images=floor)
    result = evaluate_run(EvalOptions(run=str(out / "shapes_ae_kl"), out=str(tmp_path / "ae.json"),
                                      baselines="prior", samples=[f"copy={tmp_path / 'copy.npz'}"],
                                      **{k: v for k, v in TINY_OPTIONS.items() if k != "steps"}))  # no sampler
    assert list(result["samples"]) == ["data", "copy", "reconstructions", "prior"]
    assert result["samples"]["copy"]["fd"] == pytest.approx(result["samples"]["data"]["fd"], abs=1e-9)
    del result["samples"]["copy"]
    assert result["stage"] == "autoencoder" and list(result["samples"]) == ["data", "reconstructions", "prior"]
    assert set(result["likelihood"]) >= {"bpd_standard_prior"} and "bpd" not in result["likelihood"]
    assert len(list((out / "classifiers").iterdir())) == 1  # one judge per dataset config, trained once


def test_evaluate_guidance_interval_reaches_the_sampler_and_the_record(runs, tmp_path, monkeypatch):  # noqa: F811
    """--guidance-interval is handed to every sampling call (as sample.py hands it) and recorded in the settings;
    without it the run's own sample.guidance_interval is used. (The tiny run's attribute embedding is still at its
    zero init, so its guided and unguided samples coincide: the calls are checked, not the images.)"""
    out, _ = runs
    from latentdiff.evaluation import EvalOptions, evaluate_run
    from latentdiff.pipeline import LatentDiffusion

    seen = []
    real = LatentDiffusion.sample_latents

    def spy(self, *args, **kw):
        seen.append(kw.get("guidance_interval"))
        return real(self, *args, **kw)

    monkeypatch.setattr(LatentDiffusion, "sample_latents", spy)
    for asked in ((0.0, 0.6), None):
        seen.clear()
        result = evaluate_run(EvalOptions(run=str(out / "shapes_ldm_kl"), out=str(tmp_path / "e.json"),
                                          baselines="none", guidance_interval=asked, **TINY_OPTIONS))
        runs_own = LatentDiffusion.from_run(out / "shapes_ldm_kl").sampling_settings()["guidance_interval"]
        expected = asked if asked is not None else runs_own
        assert result["settings"]["guidance_interval"] == expected
        assert len(seen) >= 3 and all(v == expected for v in seen)  # ldm, ldm_conditional, ldm_drawn_attributes


@pytest.mark.parametrize("args, words", [(["--num", "2"], "at least 4"),
                                         (["--baselines", "flow"], "not a baseline"),
                                         (["--run", "/nonexistent"], "no checkpoints/"),
                                         (["--samples", "peer=/nonexistent.npz"], "does not exist"),
                                         (["--guidance-interval", "0.7", "0.1"], "0 <= lo < hi <= 1")])
def test_evaluate_bad_input_is_one_clear_line(runs, args, words):  # noqa: F811
    out, _ = runs
    r = cli("evaluate.py", "--run", out / "shapes_ldm_kl", *args, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
