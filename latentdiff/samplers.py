"""The reverse-process loop shared by ancestral DDPM, DDIM and DPM-Solver++(2M), RePaint's inpainting
steps, and DDIM inversion.

The samplers walk a subsequence τ_S > ... > τ_1 of the timestep indices (all T by default). At each
step the network gives (ε̂, x̂0) at level ᾱ_t = ᾱ_{τ_i}; the step moves to ᾱ_s = ᾱ_{τ_{i−1}}, with
ᾱ_s = 1 after the last step, where every sampler returns x̂0. Step coefficients are float64 scalars.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from latentdiff.schedules import check_timesteps, posterior_coefficients


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def ddpm_step(x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_cumprod: float, alpha_cumprod_prev: float,
              variance: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """x_s ~ N(μ̃(x_t, x̂0), σ²) (Ho et al. 2020, Algorithm 2; the mean of Eq. 7 at x̂0 is Eq. 11's).

    σ² is β (``variance="beta"``) or β̃ (``"beta_tilde"``) of the step ᾱ_t → ᾱ_s; for a respaced
    subsequence β = 1 − ᾱ_t/ᾱ_s (Nichol & Dhariwal 2021, §4). No noise is added on the last step.
    """
    abar, abar_prev = torch.tensor(alpha_cumprod, dtype=torch.float64), torch.tensor(alpha_cumprod_prev,
                                                                                   dtype=torch.float64)
    beta, coef_x0, coef_xt, beta_tilde = posterior_coefficients(abar, abar_prev)
    mean = float(coef_x0) * x0_hat + float(coef_xt) * x_t
    if alpha_cumprod_prev == 1.0:
        return mean
    sigma2 = float(beta) if variance == "beta" else float(beta_tilde)
    return mean + math.sqrt(sigma2) * _randn_like(x_t, generator)


def ddim_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha_cumprod: float, alpha_cumprod_prev: float,
              eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """x_s = √ᾱ_s x̂0 + √(1 − ᾱ_s − σ²) ε̂ + σ z (Song et al. 2021, Eq. 12).

    σ² = η² β̃ with β̃ = (1 − ᾱ_s)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_s) (their Eq. 16): η = 0 is deterministic,
    η = 1 is the ancestral sampler with σ² = β̃.
    """
    abar, abar_prev = torch.tensor(alpha_cumprod, dtype=torch.float64), torch.tensor(alpha_cumprod_prev,
                                                                                   dtype=torch.float64)
    beta_tilde = float(posterior_coefficients(abar, abar_prev)[3])
    sigma2 = eta**2 * beta_tilde
    direction = math.sqrt(max(1 - alpha_cumprod_prev - sigma2, 0.0))  # max(): guards round-off at η = 1
    x = math.sqrt(alpha_cumprod_prev) * x0_hat + direction * eps_hat
    if sigma2 > 0:
        x = x + math.sqrt(sigma2) * _randn_like(x0_hat, generator)
    return x


def dpm_solver_pp_step(x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_cumprod: float, alpha_cumprod_prev: float,
                       previous: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """One step t → s of DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data-prediction form.

    With α = √ᾱ, σ = √(1 − ᾱ), λ = log(α/σ) and h = λ_s − λ_t > 0, the exact solution of the probability-flow
    ODE in x0 form is x_s = (σ_s/σ_t) x_t + σ_s ∫_{λ_t}^{λ_s} e^λ x̂0(λ) dλ (their §4.1). Taking x̂0 constant
    over the step gives the first-order update (DPM-Solver++1, which is DDIM with η = 0):
        x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) x̂0_t.
    The multistep second-order update replaces x̂0_t by the linear extrapolation through the previous step's
    prediction x̂0_u at level u (Algorithm 2, lines 5-6):
        r = h_u / h,   h_u = λ_t − λ_u,   D = (1 + 1/(2r)) x̂0_t − (1/(2r)) x̂0_u,
        x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D.
    The step onto the data (ᾱ_s = 1: σ_s = 0, h = ∞) is first order and returns x̂0_t, as the other samplers'
    last step does (the "lower order final step" of Algorithm 2 and of diffusers' ``lower_order_final``).

    Args:
        x_t, x0_hat: (B, ...) the state at level ᾱ_t and the data prediction there.
        alpha_cumprod, alpha_cumprod_prev: ᾱ_t and ᾱ_s (float; ᾱ_s = 1 on the last step).
        previous: None (first order: the first step) or (x̂0_u (B, ...), ᾱ_u) of the step before.
    Returns:
        x_s (B, ...).
    """
    if alpha_cumprod_prev == 1.0:
        return x0_hat
    lam_t, lam_s = 0.5 * math.log(alpha_cumprod / (1 - alpha_cumprod)), \
        0.5 * math.log(alpha_cumprod_prev / (1 - alpha_cumprod_prev))
    h = lam_s - lam_t
    d = x0_hat
    if previous is not None:
        x0_prev, abar_u = previous
        r = (lam_t - 0.5 * math.log(abar_u / (1 - abar_u))) / h
        d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_prev
    return math.sqrt((1 - alpha_cumprod_prev) / (1 - alpha_cumprod)) * x_t - \
        math.sqrt(alpha_cumprod_prev) * math.expm1(-h) * d


def forward_jump(x_s: torch.Tensor, alpha_cumprod_prev: float, alpha_cumprod: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x_t ~ q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s) x_s, (1 − ᾱ_t/ᾱ_s) I), one forward step up a (respaced) chain
    (Ho et al. Eq. 2 over the step ᾱ_s → ᾱ_t; RePaint's "jump back", Lugmayr et al. 2022, Algorithm 1 line 9)."""
    ratio = alpha_cumprod / alpha_cumprod_prev
    return math.sqrt(ratio) * x_s + math.sqrt(1 - ratio) * _randn_like(x_s, generator)


def replace_known(x: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor], alpha_cumprod: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """RePaint's combination (Lugmayr et al. 2022, Eq. 8 and Algorithm 1 lines 5-8): the known cells of x at
    level ᾱ are a fresh draw of q(x | x0_known) = N(√ᾱ x0_known, (1 − ᾱ) I) (Ho et al. Eq. 4), the others stay.

    ``known`` = (x0_known (B, ...), mask broadcastable to it, 1 = known); ᾱ = 1 gives x0_known exactly.
    """
    x0_known, mask = known
    if alpha_cumprod == 1.0:
        level = x0_known
    else:
        level = math.sqrt(alpha_cumprod) * x0_known + math.sqrt(1 - alpha_cumprod) * _randn_like(x0_known, generator)
    return torch.where(mask.to(x.device).bool(), level.to(x), x)


SAMPLERS = ("ddpm", "ddim", "dpm_solver++")


def sample_loop(diffusion, model, x_T: torch.Tensor, timesteps: torch.Tensor, sampler: str = "ddpm",
                eta: float = 0.0, generator: torch.Generator | None = None, progress: bool = False,
                trajectory_every: int | None = None, known=None, resample: int = 1, **predict_kwargs):
    """Run the reverse process from ``x_T`` over ``timesteps`` (ascending indices, visited descending).

    Args:
        diffusion: the ``GaussianDiffusion`` (its ᾱ, ``variance`` and ``predict``).
        model: ``model(x_t, t, cond)``.
        x_T: (B, ...) starting noise.
        sampler: "ddpm", "ddim" or "dpm_solver++"; eta: DDIM's η.
        generator: for the per-step noise.
        progress: show a tqdm bar.
        trajectory_every: None, or record (t, x_t, x̂0) every k-th step and at the last one.
        known: None, or (x0_known (B, ...), mask broadcastable to it, 1 = known) for inpainting (RePaint): the
            known cells of the state are replaced by a fresh q(x_s | x0_known) draw after every step (and at the
            start), by x0_known itself after the last one (see :func:`replace_known`).
        resample: RePaint's R (Lugmayr et al. 2022, Algorithm 1): each step but the last is redone R times,
            jumping back up by :func:`forward_jump` between tries. Needs a stochastic step (checked by
            ``GaussianDiffusion.sample``).
        predict_kwargs: cond, guidance_scale, uncond, classifier_guidance, clip_denoised, guidance_interval,
            autoguidance.
    Returns:
        x0 (B, ...), or (x0, {"t": (K,), "x_t": (K, B, ...), "x0_pred": (K, B, ...)}).
    """
    check_timesteps(timesteps, diffusion.num_timesteps)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    abar = diffusion.alphas_cumprod
    order = timesteps.flip(0).tolist()
    x = x_T if known is None else replace_known(x_T, known, float(abar[order[0]]), generator)
    previous = None  # DPM-Solver++(2M): (x̂0, ᾱ) of the step before
    record_t, record_x, record_x0 = [], [], []
    for i, t in enumerate(tqdm(order, desc=f"{sampler} sampling", disable=not progress)):
        abar_t = float(abar[t])
        abar_prev = float(abar[order[i + 1]]) if i + 1 < len(order) else 1.0
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        tries = resample if abar_prev < 1.0 else 1  # the last step lands on x0_known: nothing to harmonise
        for u in range(tries):
            if u > 0:
                x = forward_jump(x, abar_prev, abar_t, generator)
            eps, x0 = diffusion.predict(model, x, t_batch, **predict_kwargs)
            if u == 0 and trajectory_every is not None and (i % trajectory_every == 0 or i == len(order) - 1):
                record_t.append(t)
                record_x.append(x.cpu())
                record_x0.append(x0.cpu())
            if sampler == "ddpm":
                x_next = ddpm_step(x, x0, abar_t, abar_prev, diffusion.variance, generator)
            elif sampler == "ddim":
                x_next = ddim_step(x0, eps, abar_t, abar_prev, eta, generator)
            else:
                x_next = dpm_solver_pp_step(x, x0, abar_t, abar_prev, previous)
            x = x_next if known is None else replace_known(x_next, known, abar_prev, generator)
        previous = (x0, abar_t)
    if trajectory_every is None:
        return x
    return x, {"t": torch.tensor(record_t), "x_t": torch.stack(record_x), "x0_pred": torch.stack(record_x0)}


def ddim_invert_loop(diffusion, model, x0: torch.Tensor, timesteps: torch.Tensor, progress: bool = False,
                     **predict_kwargs) -> torch.Tensor:
    """Deterministic DDIM run forwards, x0 → x_T (Song et al. 2021, §4.3: the ODE of Eq. 14 integrated up).

    From level ᾱ_s (1 at the start) to ᾱ_t: ε̂ = ε_θ(x_s, t), x̂0 = (x_s − √(1−ᾱ_s) ε̂)/√ᾱ_s,
    x_t = √ᾱ_t x̂0 + √(1−ᾱ_t) ε̂ — the DDIM step with ε̂ taken at the current point, since x_t is unknown.
    """
    check_timesteps(timesteps, diffusion.num_timesteps)
    abar = diffusion.alphas_cumprod
    x, abar_s = x0, 1.0
    for t in tqdm(timesteps.tolist(), desc="ddim inversion", disable=not progress):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps, _ = diffusion.predict(model, x, t_batch, **predict_kwargs)
        x0_hat = (x - math.sqrt(1 - abar_s) * eps) / math.sqrt(abar_s)
        abar_t = float(abar[t])
        x = math.sqrt(abar_t) * x0_hat + math.sqrt(1 - abar_t) * eps
        abar_s = abar_t
    return x
