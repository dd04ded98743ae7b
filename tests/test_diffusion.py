"""GaussianDiffusion against closed forms: Gaussian data N(0, s²I), whose exact ε predictor is known.

For x0 ~ N(0, s²), x_t = √ᾱ x0 + √(1−ᾱ) ε is Gaussian with variance ᾱ s² + 1 − ᾱ, so
ε*(x_t, t) = E[ε | x_t] = √(1−ᾱ) x_t / (ᾱ s² + 1 − ᾱ) and Var(x0 | x_t) = s²(1−ᾱ) / (ᾱ s² + 1 − ᾱ).
"""

import math

import pytest
import torch

from latentdiff.diffusion import GaussianDiffusion


def exact_eps(diffusion, s):
    """The Bayes-optimal ε predictor for data N(0, s² I)."""
    def model(x_t, t, cond=None):
        abar = diffusion.alphas_cumprod[t.cpu()].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return (1 - abar).sqrt() * x_t / (abar * s**2 + 1 - abar)
    return model


def random_model(dim, seed=0):
    """A fixed, t-dependent linear 'network' in float64: any function will do for identities."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)

    def model(x_t, t, cond=None):
        return (x_t @ weight) * (1 + t.to(x_t.dtype)[:, None] / 1000)
    return model


# -- forward process and posterior ------------------------------------------------------------------
def test_q_sample_equals_t_one_step_transitions_of_eq2():
    torch.manual_seed(0)
    diff = GaussianDiffusion(num_timesteps=60, beta_start=1e-3, beta_end=0.1)
    x0 = torch.full((200000,), 1.5, dtype=torch.float64)
    x = x0.clone()
    for i in range(40):  # x_t = √(1−β_t) x_{t−1} + √β_t z, t = 1..40
        x = (1 - diff.betas[i]).sqrt() * x + diff.betas[i].sqrt() * torch.randn_like(x)
    t = torch.full((200000,), 39)
    direct = diff.q_sample(x0, t)
    abar = diff.alphas_cumprod[39]
    assert float(x.mean()) == pytest.approx(float(abar.sqrt() * 1.5), abs=0.01)
    assert float(direct.mean()) == pytest.approx(float(abar.sqrt() * 1.5), abs=0.01)
    assert float(x.var()) == pytest.approx(float(1 - abar), rel=0.02)
    assert float(direct.var()) == pytest.approx(float(1 - abar), rel=0.02)
    noise = torch.randn(5, 3)
    x0s = torch.randn(5, 3)
    ts = torch.tensor([0, 5, 10, 39, 59])
    expected = diff.alphas_cumprod[ts].sqrt().float()[:, None] * x0s + \
        (1 - diff.alphas_cumprod[ts]).sqrt().float()[:, None] * noise
    assert torch.allclose(diff.q_sample(x0s, ts, noise), expected, atol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("index", [1, 50, 500, 999])
def test_posterior_eq7_matches_bayes_rule_on_a_grid(schedule, index):
    diff = GaussianDiffusion(beta_schedule=schedule)
    x0, x_t = 0.7, -0.4
    beta, abar_prev = float(diff.betas[index]), float(diff.alphas_cumprod_prev[index])
    # q(x_{t−1} | x_t, x0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x0), evaluated numerically on a fine grid.
    lo, hi = min(x_t / math.sqrt(1 - beta), math.sqrt(abar_prev) * x0), max(x_t / math.sqrt(1 - beta),
                                                                           math.sqrt(abar_prev) * x0)
    width = 12 * math.sqrt(min(beta, 1 - abar_prev))
    grid = torch.linspace(lo - width, hi + width, 400001, dtype=torch.float64)
    log_p = -(x_t - math.sqrt(1 - beta) * grid) ** 2 / (2 * beta) \
        - (grid - math.sqrt(abar_prev) * x0) ** 2 / (2 * (1 - abar_prev))
    p = torch.exp(log_p - log_p.max())
    p = p / torch.trapezoid(p, grid)
    mean = torch.trapezoid(p * grid, grid)
    var = torch.trapezoid(p * (grid - mean) ** 2, grid)
    t = torch.tensor([index])
    got_mean, got_var = diff.q_posterior(torch.tensor([x0], dtype=torch.float64),
                                         torch.tensor([x_t], dtype=torch.float64), t)
    assert float(got_mean) == pytest.approx(float(mean), rel=1e-6, abs=1e-9)
    assert float(got_var) == pytest.approx(float(var), rel=1e-5)


# -- predictions -------------------------------------------------------------------------------------
def test_eps_x0_v_conversions_round_trip():
    diff = GaussianDiffusion(beta_schedule="cosine")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, 2, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=g)
    x_t = diff.q_sample(x0, t, eps)
    v = diff.velocity(x0, eps, t)
    assert torch.allclose(diff.predict_x0_from_eps(x_t, t, eps), x0, atol=1e-6)
    assert torch.allclose(diff.predict_eps_from_x0(x_t, t, x0), eps, atol=1e-9)
    assert torch.allclose(diff.predict_x0_from_v(x_t, t, v), x0, atol=1e-9)
    assert torch.allclose(diff.predict_eps_from_v(x_t, t, v), eps, atol=1e-9)
    # (x_t, v) is (x0, ε) rotated by the angle φ with cos φ = √ᾱ (Salimans & Ho, Fig. 2): norms agree.
    assert torch.allclose(v**2 + x_t**2, eps**2 + x0**2, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_reverse_mean_is_eq11_whatever_the_network_predicts(prediction):
    diff = GaussianDiffusion(prediction=prediction)
    eps_net = random_model(5)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(32, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (32,), generator=g)

    def net(x, tt, cond=None):  # the same denoiser, expressed in the parameterisation under test
        eps = eps_net(x, tt)
        x0 = diff.predict_x0_from_eps(x, tt, eps)
        return {"eps": eps, "x0": x0, "v": diff.velocity(x0, eps, tt)}[prediction]

    step = diff.p_mean_variance(net, x_t, t)
    alpha, beta = diff.alphas[t].view(-1, 1), diff.betas[t].view(-1, 1)
    abar = diff.alphas_cumprod[t].view(-1, 1)
    eq11 = (x_t - beta / (1 - abar).sqrt() * eps_net(x_t, t)) / alpha.sqrt()
    assert torch.allclose(step.mean, eq11, atol=1e-8)
    assert torch.allclose(step.eps_hat, eps_net(x_t, t), atol=1e-8)


# -- training loss -------------------------------------------------------------------------------------
def test_simple_loss_of_the_exact_predictor_is_the_posterior_variance_of_eps():
    torch.manual_seed(0)
    s = 0.7
    diff = GaussianDiffusion()
    model = exact_eps(diff, s)
    x0 = s * torch.randn(20000, 4)
    abar = diff.alphas_cumprod
    expected_per_t = abar * s**2 / (abar * s**2 + 1 - abar)  # Var(ε | x_t) = E‖ε − ε*‖² per dimension
    for index in (0, 100, 400, 999):
        t = torch.full((20000,), index)
        loss = diff.training_loss(model, x0, t=t)
        assert float(loss) == pytest.approx(float(expected_per_t[index]), rel=0.03)
    loss, t = diff.training_loss(model, x0, return_t=True)
    assert t.shape == (20000,) and t.min() >= 0 and t.max() < 1000
    assert float(loss) == pytest.approx(float(expected_per_t.mean()), rel=0.03)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vlb_weighting_equals_eq12_term_by_term(variance, prediction):
    """D · loss_vlb(t) = ‖μ̃_t(x_t, x0) − μ_θ(x_t, t)‖² / (2σ_t²): L_{t−1} less its constant (L_0's at t=0)."""
    diff = GaussianDiffusion(variance=variance, prediction=prediction, loss_weighting="vlb")
    model = random_model(6)
    g = torch.Generator().manual_seed(2)
    T, B = diff.num_timesteps, 3
    x0 = torch.randn(B, 6, generator=g, dtype=torch.float64).repeat(T, 1)
    noise = torch.randn(B * T, 6, generator=g, dtype=torch.float64)
    t = torch.arange(T).repeat_interleave(B)
    loss = diff.training_loss(model, x0, t=t, noise=noise, reduce=False)
    x_t = diff.q_sample(x0, t, noise)
    true_mean, _ = diff.q_posterior(x0, x_t, t)
    step = diff.p_mean_variance(model, x_t, t)
    sigma2 = diff.betas if variance == "beta" else torch.cat([diff.posterior_variance[1:2],
                                                               diff.posterior_variance[1:]])
    eq12 = ((true_mean - step.mean) ** 2).sum(1) / (2 * sigma2[t])
    assert torch.allclose(6 * loss, eq12, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("weighting", ["vlb", "min_snr"])
def test_vlb_and_min_snr_define_one_objective_for_every_parameterisation(weighting):
    eps_net = random_model(4, seed=3)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(500, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(500, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (500,), generator=g)
    losses = {}
    for prediction in ("eps", "x0", "v"):
        diff = GaussianDiffusion(prediction=prediction, loss_weighting=weighting, min_snr_gamma=5.0)

        def net(x, tt, cond=None, diff=diff, prediction=prediction):
            eps = eps_net(x, tt)
            x0_hat = diff.predict_x0_from_eps(x, tt, eps)
            return {"eps": eps, "x0": x0_hat, "v": diff.velocity(x0_hat, eps, tt)}[prediction]

        losses[prediction] = diff.training_loss(net, x0, t=t, noise=noise, reduce=False)
    assert torch.allclose(losses["x0"], losses["eps"], rtol=1e-6)
    assert torch.allclose(losses["v"], losses["eps"], rtol=1e-6)
    if weighting == "min_snr":  # ε-space weight min(SNR, γ)/SNR: 1 where SNR ≤ γ (the noisy steps)
        diff = GaussianDiffusion(loss_weighting="min_snr", min_snr_gamma=5.0)
        simple = GaussianDiffusion().training_loss(eps_net, x0, t=t, noise=noise, reduce=False)
        noisy = diff.snr[t] <= 5.0
        assert torch.allclose(losses["eps"][noisy], simple[noisy])
        assert bool((losses["eps"][~noisy] < simple[~noisy]).all())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="variance"):
        GaussianDiffusion(variance="learned")
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(prediction="score")
    with pytest.raises(ValueError, match="loss_weighting"):
        GaussianDiffusion(loss_weighting="p2")
    diff = GaussianDiffusion(num_timesteps=10)
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="0..9"):
        diff.training_loss(lambda x, t, c=None: x, x0, t=torch.full((4,), 10))
    with pytest.raises(ValueError, match="shaped like x_t"):
        diff.training_loss(lambda x, t, c=None: x[:, :1], x0)


# -- the variational bound ---------------------------------------------------------------------------------
def expected_bound_per_dim(diff, s):
    """E_x0[L] per dimension for data N(0, s²) and the exact predictor, derived independently.

    μ_θ − μ̃ = c0 (E[x0|x_t] − x0), so E KL_t = ½[log(σ²/β̃) + β̃/σ² − 1] + c0² Var(x0|x_t)/(2σ²);
    E L_0 = ½ log(2πσ_1²) + Var(x0|x_1)/(2σ_1²); E L_T = ½[−log(1−ᾱ_T) + (1−ᾱ_T) + ᾱ_T s² − 1].
    """
    abar, betas = diff.alphas_cumprod, diff.betas
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    c0 = abar_prev.sqrt() * betas / (1 - abar)
    sigma2 = betas if diff.variance == "beta" else torch.cat([beta_tilde[1:2], beta_tilde[1:]])
    post_var = s**2 * (1 - abar) / (abar * s**2 + 1 - abar)
    kl = 0.5 * (torch.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1) + c0**2 * post_var / (2 * sigma2)
    decoder = 0.5 * torch.log(2 * math.pi * sigma2[0]) + post_var[0] / (2 * sigma2[0])
    prior = 0.5 * (-torch.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * s**2 - 1)
    return float(decoder + kl[1:].sum() + prior)


def exact_nll(x0, s):
    return (0.5 * math.log(2 * math.pi * s**2) + x0.double() ** 2 / (2 * s**2)).flatten(1).sum(1)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_nll_bound_matches_its_analytic_expectation(variance):
    torch.manual_seed(0)
    s, D = 1.5, 4
    diff = GaussianDiffusion(variance=variance)
    x0 = s * torch.randn(1000, D)
    bound = diff.nll_bound(exact_eps(diff, s), x0, batch_t=200)
    gap = bound["total"] - exact_nll(x0, s)  # the data's own spread cancels
    expected_gap = D * (expected_bound_per_dim(diff, s) - (0.5 * math.log(2 * math.pi * s**2) + 0.5))
    se = float(gap.std()) / math.sqrt(len(gap))
    assert abs(float(gap.mean()) - expected_gap) < 4 * se, (float(gap.mean()), expected_gap, se)


def test_nll_bound_with_sigma_beta_is_within_one_percent_of_the_exact_nll():
    torch.manual_seed(1)
    s = 2.0
    diff = GaussianDiffusion(num_timesteps=200, beta_start=5e-4, beta_end=0.1, variance="beta")
    x0 = s * torch.randn(3000, 4)
    bound = diff.nll_bound(exact_eps(diff, s), x0, batch_t=200)["total"]
    nll = exact_nll(x0, s)
    assert abs(float(bound.mean() - nll.mean())) < 0.01 * float(nll.mean())


def test_monte_carlo_timesteps_weigh_every_t_once_in_expectation():
    """mc_timestep_draws is unbiased for any sum over t = 1..T−1: over many examples the weights a t receives
    average to 1, for the t near 1 the proposal favours and the large t it draws rarely (the defensive mixture's
    floor); and the j-th draw lies in the j-th of K equal-probability strata of the proposal."""
    diff = GaussianDiffusion(num_timesteps=200, beta_start=5e-4, beta_end=0.1)
    K, B = 20, 200_000
    t, w = diff.mc_timestep_draws(B, K, torch.Generator().manual_seed(0))
    assert t.shape == w.shape == (B, K) and t.min() >= 1 and t.max() <= 199
    per_t = torch.zeros(200, dtype=torch.float64).index_add_(0, t.flatten(), w.flatten()) / B
    assert torch.allclose(per_t[1:], torch.ones(199, dtype=torch.float64), atol=0.15), per_t[1:].tolist()
    assert abs(float(per_t[1:].sum()) - 199) < 0.1  # the strata make the total weight all but exact
    r = diff.importance_distribution()[1:]
    r = 0.9 * r / r.sum() + 0.1 / 199
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), r.cumsum(0)])  # F(t − 1), F(t) at [t − 1], [t]
    j = torch.arange(K)
    assert bool((cdf[t - 1] <= (j + 1) / K + 1e-12).all() and (cdf[t] >= j / K - 1e-12).all())
    assert torch.allclose(w, 1 / (K * r[t - 1]))


def test_monte_carlo_bound_has_far_less_variance_than_uniform_timesteps():
    """The K-draw estimate of Σ L_{t−1} against the exact sum, exact Gaussian predictor: its variance about it over
    the examples is under a fifth of K uniform distinct draws' (as the estimator was before, simulated here from
    the terms of a second exact run, so that both carry the same noise of their x_t draws): the sum lies near
    t = 1, where uniform draws rarely look."""
    torch.manual_seed(4)
    s, K = 0.8, 20
    diff = GaussianDiffusion(num_timesteps=200, beta_start=5e-4, beta_end=0.1, variance="beta_tilde")
    model = exact_eps(diff, s)
    x0 = s * torch.randn(2000, 3)
    exact = diff.nll_bound(model, x0, batch_t=100, return_terms=True)
    mc = diff.nll_bound(model, x0, mc_timesteps=K, generator=torch.Generator().manual_seed(1))
    other = diff.nll_bound(model, x0, batch_t=100, return_terms=True)["terms"][:, 1:]
    uniform = torch.rand(2000, 199, generator=torch.Generator().manual_seed(2)).argsort(dim=1)[:, :K]
    uniform = other.gather(1, uniform).sum(1) * 199 / K
    extra = [float((estimate - exact["diffusion"]).var()) for estimate in (mc["diffusion"], uniform)]
    assert extra[0] < extra[1] / 5, extra


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("s", [0.5, 2.0])
def test_nll_bound_is_never_below_the_exact_nll(variance, s):
    torch.manual_seed(2)
    diff = GaussianDiffusion(num_timesteps=200, beta_start=5e-4, beta_end=0.1, variance=variance)
    x0 = s * torch.randn(1000, 4)
    gap = diff.nll_bound(exact_eps(diff, s), x0, batch_t=200)["total"] - exact_nll(x0, s)
    assert float(gap.mean()) > -4 * float(gap.std()) / math.sqrt(len(gap))


def test_nll_bound_parts_add_up_and_monte_carlo_over_t_is_unbiased():
    torch.manual_seed(3)
    s, D = 0.8, 3
    diff = GaussianDiffusion(num_timesteps=200, beta_start=5e-4, beta_end=0.1, variance="beta_tilde")
    model = exact_eps(diff, s)
    x0 = s * torch.randn(2000, D)
    exact = diff.nll_bound(model, x0, batch_t=50, return_terms=True)
    assert exact["terms"].shape == (2000, 200)
    assert torch.equal(exact["t"], torch.arange(200).expand(2000, 200))
    assert torch.allclose(exact["total"], exact["prior"] + exact["diffusion"] + exact["decoder"])
    assert torch.allclose(exact["diffusion"], exact["terms"][:, 1:].sum(1))
    assert torch.allclose(exact["bpd"], exact["total"] / (D * math.log(2)))
    g = torch.Generator().manual_seed(0)
    mc = diff.nll_bound(model, x0, mc_timesteps=20, generator=g, return_terms=True)
    assert mc["t"].shape == (2000, 21) and bool((mc["t"][:, 0] == 0).all())
    assert bool((mc["t"][:, 1:].diff(dim=1) >= 0).all()) and 1 <= mc["t"][:, 1:].min() and mc["t"].max() < 200
    assert len(set(mc["t"][:, -1].tolist())) > 10  # every example draws its own timesteps
    assert torch.allclose(mc["diffusion"], (mc["terms"][:, 1:] * mc["weights"][:, 1:]).sum(1))
    assert bool((mc["weights"][:, 0] == 1).all()) and bool((exact["weights"] == 1).all())
    nll = exact_nll(x0, s)
    expected = D * (expected_bound_per_dim(diff, s) - (0.5 * math.log(2 * math.pi * s**2) + 0.5))
    for result in (exact, mc):
        gap = result["total"] - nll
        assert abs(float(gap.mean()) - expected) < 4 * float(gap.std()) / math.sqrt(len(gap))
    with pytest.raises(ValueError, match="mc_timesteps"):
        diff.nll_bound(model, x0, mc_timesteps=200)
