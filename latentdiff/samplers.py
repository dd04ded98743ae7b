"""The reverse-process loop shared by ancestral DDPM and DDIM, and DDIM inversion.

Both samplers walk a subsequence τ_S > ... > τ_1 of the timestep indices (all T by default). At each
step the network gives (ε̂, x̂0) at level ᾱ_t = ᾱ_{τ_i}; the step moves to ᾱ_s = ᾱ_{τ_{i−1}}, with
ᾱ_s = 1 after the last step, where both samplers return x̂0. Step coefficients are float64 scalars.
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


def sample_loop(diffusion, model, x_T: torch.Tensor, timesteps: torch.Tensor, sampler: str = "ddpm",
                eta: float = 0.0, generator: torch.Generator | None = None, progress: bool = False,
                trajectory_every: int | None = None, **predict_kwargs):
    """Run the reverse process from ``x_T`` over ``timesteps`` (ascending indices, visited descending).

    Args:
        diffusion: the ``GaussianDiffusion`` (its ᾱ, ``variance`` and ``predict``).
        model: ``model(x_t, t, cond)``.
        x_T: (B, ...) starting noise.
        sampler: "ddpm" or "ddim"; eta: DDIM's η.
        generator: for the per-step noise.
        progress: show a tqdm bar.
        trajectory_every: None, or record (t, x_t, x̂0) every k-th step and at the last one.
        predict_kwargs: cond, guidance_scale, uncond, classifier_guidance, clip_denoised.
    Returns:
        x0 (B, ...), or (x0, {"t": (K,), "x_t": (K, B, ...), "x0_pred": (K, B, ...)}).
    """
    check_timesteps(timesteps, diffusion.num_timesteps)
    abar = diffusion.alphas_cumprod
    order = timesteps.flip(0).tolist()
    x = x_T
    record_t, record_x, record_x0 = [], [], []
    for i, t in enumerate(tqdm(order, desc=f"{sampler} sampling", disable=not progress)):
        abar_prev = float(abar[order[i + 1]]) if i + 1 < len(order) else 1.0
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps, x0 = diffusion.predict(model, x, t_batch, **predict_kwargs)
        if trajectory_every is not None and (i % trajectory_every == 0 or i == len(order) - 1):
            record_t.append(t)
            record_x.append(x.cpu())
            record_x0.append(x0.cpu())
        if sampler == "ddpm":
            x = ddpm_step(x, x0, float(abar[t]), abar_prev, diffusion.variance, generator)
        else:
            x = ddim_step(x0, eps, float(abar[t]), abar_prev, eta, generator)
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
