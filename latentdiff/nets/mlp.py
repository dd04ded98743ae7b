"""Residual MLP denoiser for vector latents (B, dim) and 2-D points."""

from __future__ import annotations

import torch
from torch import nn

from latentdiff.nets.embeddings import TimestepEmbedding


class ResidualMLPBlock(nn.Module):
    """h + Linear(Dropout(SiLU(Linear(LayerNorm(h)) + emb))): a pre-norm residual block; emb shifts the
    hidden features so every block knows the timestep (and condition)."""

    def __init__(self, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.fc1(self.norm(h)) + self.emb(emb))


class MLPDenoiser(nn.Module):
    """ε-network for (B, dim) inputs: ``forward(x, t, cond=None)`` → (B, dim).

    Args:
        dim: size of one input vector.
        hidden: width of the residual stream.
        num_blocks: residual blocks.
        dropout: inside each block.
        cond_dim: width of an optional (B, cond_dim) float condition, projected and added to the
            time embedding; None for an unconditional network.
    """

    def __init__(self, dim: int, hidden: int = 256, num_blocks: int = 4, dropout: float = 0.0,
                 cond_dim: int | None = None):
        super().__init__()
        self.dim, self.cond_dim = dim, cond_dim
        self.time_embed = TimestepEmbedding(hidden, hidden)
        self.cond_proj = nn.Linear(cond_dim, hidden) if cond_dim else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, dropout) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)  # starts as ε̂ = 0, the best constant guess of unit noise
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser expects (B, {self.dim}) inputs, got {tuple(x.shape)}")
        emb = self.time_embed(t)
        if cond is not None:
            if self.cond_proj is None:
                raise ValueError("this MLPDenoiser was built without cond_dim; it takes no condition")
            emb = emb + self.cond_proj(cond.to(emb.dtype))
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
