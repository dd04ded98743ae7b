"""Timestep embeddings: sinusoidal features (Vaswani et al. 2017, §3.5), then an MLP (Ho et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos(t ω_k), sin(t ω_k)] with ω_k = max_period^(−k/(dim/2)), k = 0..dim/2−1.

    Vaswani et al. 2017, §3.5, with the timestep as the position. t: (B,) int or float; returns (B, dim)
    float32 (an odd ``dim`` gets a zero last column).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """(B,) timesteps → (B, out_dim): sinusoidal features of width ``dim``, Linear, SiLU, Linear."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))
