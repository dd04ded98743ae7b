"""What the optimiser step needs besides ``torch.optim``: the EMA of the weights and the learning-rate schedule."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from latentdiff.config import TrainConfig


def power_ema_gamma(sigma_rel: float) -> float:
    """The exponent γ of Karras et al. 2024's power-function EMA (their Eq. 3) whose averaging profile
    p(τ) ∝ τ^γ over the run so far, τ ∈ [0, 1] its fraction of the steps, has standard deviation ``sigma_rel``
    (a width relative to the run's length).

    That profile has mean (γ+1)/(γ+2) and second moment (γ+1)/(γ+3), so σ_rel² = (γ+1) / ((γ+2)² (γ+3)), i.e.
    γ³ + 7γ² + (16 − σ_rel⁻²) γ + (12 − σ_rel⁻²) = 0, whose largest real root is γ (σ_rel = 0.05 → γ ≈ 16.97,
    0.10 → 6.94, the paper's values). σ_rel must be below 1/√12 ≈ 0.289 (γ = 0: the uniform average).
    """
    if not 0 < sigma_rel < 12 ** -0.5:
        raise ValueError(f"sigma_rel={sigma_rel!r}: must be in (0, 1/sqrt(12) ≈ 0.289)")
    roots = np.roots([1.0, 7.0, 16.0 - sigma_rel ** -2, 12.0 - sigma_rel ** -2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


class EMA:
    """Moving average of a module's parameters (buffers are copied): θ_ema ← d_n θ_ema + (1 − d_n) θ.

    Two profiles of the decay d_n at the n-th update (n = 1, 2, ...):

    - exponential (``decay``): d_n = decay, or min(decay, n / (9 + n)) with ``warmup``, so the average is not
      dominated by the random initialisation early in training. Until n ≈ 9/(1 − decay), n / (9 + n) ≈ (1 − 1/n)^9:
      the warm-up is close to a power-function average with γ = 8 (σ_rel ≈ 0.09), for a whole 6000-step run at
      decay 0.999.
    - power function (``sigma_rel``, Karras et al. 2024, Eq. 3 and their Algorithm 2): d_n = (1 − 1/n)^(γ+1)
      with γ from ``power_ema_gamma``. The average is then Σ_i w_i θ_i with w_i = (i^(γ+1) − (i−1)^(γ+1)) / n^(γ+1),
      a fixed share of the run's length whatever the number of steps, which suits short runs.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, sigma_rel: float | None = None):
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.gamma = power_ema_gamma(sigma_rel) if sigma_rel is not None else None
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """d_n of the next update, n = num_updates + 1."""
        n = self.num_updates + 1
        if self.gamma is not None:
            return (1.0 - 1.0 / n) ** (self.gamma + 1.0)
        if not self.warmup:
            return self.decay
        return min(self.decay, n / (9 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = list(self.module.parameters())
        p = [x.detach() for x in model.parameters()]
        torch._foreach_lerp_(ema_p, p, 1.0 - d)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then constant, or cosine decay to ``min_lr_ratio * lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
