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


SPACINGS = ("linspace", "leading", "trailing", "logsnr")


def _round_div(num: torch.Tensor, den: int) -> torch.Tensor:
    """round(num / den) for int64 ``num`` and a positive int ``den``, exactly, ties to even (as torch.round).

    Integer arithmetic: a float ``arange``/``linspace`` accumulates round-off, and an index that should be
    0 could come out as −1 after ``round() − 1`` (issue 15: trailing spacing, T = 1000, S = 61).
    """
    q, r = torch.div(num, den, rounding_mode="floor"), torch.remainder(num, den)
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up.long()


def check_timesteps(timesteps: torch.Tensor, num_timesteps: int, steps: int | None = None) -> torch.Tensor:
    """Raise ValueError unless ``timesteps`` is a 1-D int64 tensor of strictly increasing indices in 0..T−1
    (``steps`` of them when given). Returns it unchanged. The samplers visit it backwards, so "strictly
    increasing as returned" is "strictly decreasing as visited": no level twice, none outside the schedule
    (index −1 would silently read ᾱ_T through Python's negative indexing)."""
    if not isinstance(timesteps, torch.Tensor) or timesteps.dim() != 1 or timesteps.dtype != torch.long:
        raise ValueError(f"timesteps must be a 1-D int64 tensor of indices, got "
                         f"{getattr(timesteps, 'dtype', type(timesteps).__name__)} of shape "
                         f"{tuple(getattr(timesteps, 'shape', ()))}")
    if steps is not None and len(timesteps) != steps:
        raise ValueError(f"expected {steps} timesteps, got {len(timesteps)}: {timesteps.tolist()[:8]}...")
    if len(timesteps) == 0:
        raise ValueError("timesteps is empty: a chain needs at least one step")
    if int(timesteps.min()) < 0 or int(timesteps.max()) >= num_timesteps:
        raise ValueError(f"timesteps must lie in 0..{num_timesteps - 1}, got {int(timesteps.min())}.."
                         f"{int(timesteps.max())}")
    if len(timesteps) > 1 and not bool((timesteps.diff() > 0).all()):
        raise ValueError(f"timesteps must be strictly increasing (distinct levels), got {timesteps.tolist()[:8]}...")
    return timesteps


def half_log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """λ = log(α/σ) = ½ log(ᾱ / (1 − ᾱ)) with α = √ᾱ, σ = √(1 − ᾱ) (Lu et al. 2022, DPM-Solver §3.1). Same shape."""
    return 0.5 * (torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod))


def logsnr_timesteps(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` indices whose λ = log(α/σ) are (as near as the schedule allows) uniform between λ of the
    first and of the last index of ``alphas_cumprod`` (T,): the time steps of DPM-Solver's "logSNR" spacing
    (Lu et al. 2022, DPM-Solver §3.3 / DPM-Solver++ §5).

    Rule: each target λ goes to the index of the nearest λ; where two targets land on one index (λ moves by
    more than the target gap between neighbouring indices, near both ends of the schedule) the later one moves
    up to the next free index, and whatever runs past T−1 is pushed back down. The result is exactly
    ``steps`` distinct ascending indices, the first and last ones included (one step: T−1 alone).
    """
    T = len(alphas_cumprod)
    if steps == 1:
        return torch.tensor([T - 1])
    lam = half_log_snr(alphas_cumprod.double())  # decreasing in the index
    targets = torch.linspace(float(lam[0]), float(lam[-1]), steps, dtype=torch.float64)
    ts = (lam.view(1, -1) - targets.view(-1, 1)).abs().argmin(dim=1).tolist()
    for i in range(1, steps):  # collisions up ...
        ts[i] = max(ts[i], ts[i - 1] + 1)
    ts[-1] = min(ts[-1], T - 1)
    for i in range(steps - 2, -1, -1):  # ... and back down from T−1
        ts[i] = min(ts[i], ts[i + 1] - 1)
    return torch.tensor(ts, dtype=torch.long)


def spaced_timesteps(num_timesteps: int, steps: int | None, spacing: str = "linspace",
                     alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """The ``steps`` timestep indices (ascending, int64, exactly ``steps`` distinct) a sampler visits in 0..T−1.

    Spacings (as compared in Lin et al. 2024, "Common diffusion noise schedules ... are flawed", Table 2), in
    exact integer arithmetic (round = to nearest, ties to even):
        linspace: round(i (T−1)/(S−1)), i = 0..S−1, both ends included (one step: T−1 alone, the chain must
                  start from the noisiest level; it is also how a partial chain of one step starts at its
                  start_t). Distinct because the gap (T−1)/(S−1) ≥ 1 for S ≤ T;
        leading:  0, ⌊T/S⌋, 2⌊T/S⌋, ... , starts at 0 and stops short of T−1 (DDIM's original choice);
        trailing: round(j T/S) − 1, j = 1..S: T−1, about T−1−T/S, ... down to round(T/S) − 1 ≥ 0; always
                  starts from the last (noisiest) level;
        logsnr:   uniform in λ = log(α/σ) (see :func:`logsnr_timesteps`; needs ``alphas_cumprod``, the (T,) ᾱ).
    ``steps=None`` means all T timesteps. Every result passes :func:`check_timesteps`.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if steps is None or steps == num_timesteps:
        return check_timesteps(torch.arange(num_timesteps), num_timesteps, num_timesteps)
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and num_timesteps={num_timesteps}, got {steps}")
    T, S = num_timesteps, steps
    if spacing == "linspace":
        ts = torch.tensor([T - 1]) if S == 1 else _round_div(torch.arange(S) * (T - 1), S - 1)
    elif spacing == "leading":
        ts = torch.arange(S) * (T // S)
    elif spacing == "trailing":
        ts = _round_div(torch.arange(1, S + 1) * T, S) - 1
    else:
        if alphas_cumprod is None or len(alphas_cumprod) != T:
            raise ValueError("timestep_spacing='logsnr' needs the schedule's alphas_cumprod of length "
                             f"num_timesteps={T}")
        ts = logsnr_timesteps(alphas_cumprod, S)
    return check_timesteps(ts.long(), T, S)
