"""Noise schedules β_1..β_T, the posterior coefficients they imply, and sampling timestep subsequences.

Everything here is float64: ᾱ_t = ∏ (1 − β_s) spans four orders of magnitude and the bound and the
samplers take square roots and ratios of it. Index ``i`` of every length-T tensor is the paper's t = i + 1.
"""

from __future__ import annotations

import math

import torch


def linear_beta_schedule(num_timesteps: int, beta_start: float = 1e-4,
                         beta_end: float = 0.02) -> torch.Tensor:
    """β_t evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, §4). Returns (T,) float64."""
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"linear schedule needs 0 < beta_start <= beta_end < 1, got {beta_start}, "
                         f"{beta_end}")
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_beta_schedule(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, Eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

    β_t = 1 − ᾱ(t)/ᾱ(t−1), clipped at ``max_beta`` so that the last steps stay finite (their §3.2).
    ``offset`` is their s, which keeps β_1 from being vanishingly small. Returns (T,) float64.
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


def make_beta_schedule(name: str, num_timesteps: int, beta_start: float = 1e-4,
                       beta_end: float = 0.02) -> torch.Tensor:
    """β_1..β_T (float64, shape (T,)) of the schedule ``name``: "linear" or "cosine"."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        return linear_beta_schedule(num_timesteps, beta_start, beta_end)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"unknown beta_schedule {name!r}; use 'linear' or 'cosine'")


def posterior_coefficients(alphas_cumprod: torch.Tensor, alphas_cumprod_prev: torch.Tensor):
    """Coefficients of q(x_s | x_t, x_0) for any pair of levels s < t (Ho et al. 2020, Eqs. 6-7).

    With ᾱ_t, ᾱ_s the cumulative products at the two levels, the step between them has
    β = 1 − ᾱ_t/ᾱ_s, and the posterior is N(c0 · x_0 + ct · x_t, β̃) with
        c0 = √ᾱ_s · β / (1 − ᾱ_t),   ct = √(ᾱ_t/ᾱ_s) · (1 − ᾱ_s) / (1 − ᾱ_t),   β̃ = β (1 − ᾱ_s)/(1 − ᾱ_t).
    For consecutive steps (s = t − 1) this is Eq. 7 exactly; for a subsequence of timesteps it is the
    respaced process of Nichol & Dhariwal 2021 (§4), which the samplers use with fewer steps.

    Args:
        alphas_cumprod: ᾱ_t, float64 tensor of any shape.
        alphas_cumprod_prev: ᾱ_s, same shape (1.0 where s is the data, t = 1).
    Returns:
        (beta, coef_x0, coef_xt, variance), each shaped like the inputs.
    """
    beta = 1 - alphas_cumprod / alphas_cumprod_prev
    coef_x0 = alphas_cumprod_prev.sqrt() * beta / (1 - alphas_cumprod)
    coef_xt = (1 - beta).sqrt() * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    variance = beta * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    return beta, coef_x0, coef_xt, variance


def spaced_timesteps(num_timesteps: int, steps: int | None, spacing: str = "linspace") -> torch.Tensor:
    """The ``steps`` timestep indices (ascending, int64) a sampler visits out of 0..T−1.

    Spacings (as compared in Lin et al. 2024, "Common diffusion noise schedules ... are flawed", Table 2):
        linspace: round(linspace(0, T−1, S)), both ends included (one step: T−1 alone, the chain must start
                  from the noisiest level; it is also how a partial chain of one step starts at its start_t);
        leading:  0, T/S, 2T/S, ... (floor), starts at 0 and stops short of T−1 (DDIM's original choice);
        trailing: T−1, T−1−T/S, ... down to about T/S − 1, always starts from the last (noisiest) level.
    ``steps=None`` means all T timesteps.
    """
    if steps is None or steps == num_timesteps:
        return torch.arange(num_timesteps)
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and num_timesteps={num_timesteps}, got {steps}")
    if spacing == "linspace":
        ts = torch.linspace(0 if steps > 1 else num_timesteps - 1, num_timesteps - 1, steps,
                            dtype=torch.float64).round().long()
    elif spacing == "leading":
        ts = torch.arange(steps) * (num_timesteps // steps)
    elif spacing == "trailing":
        ts = (torch.arange(num_timesteps, 0, -num_timesteps / steps, dtype=torch.float64).round() - 1).long()
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; use 'linspace', 'leading' or 'trailing'")
    return ts.unique(sorted=True)
