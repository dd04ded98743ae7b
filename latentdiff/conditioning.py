"""Attribute conditioning for the denoiser, with an "unspecified" value for classifier-free guidance.

A condition is a LongTensor ``attrs`` of shape (B, A): for attribute a, a value index in
``0..num_values[a]-1`` (binary attributes: 0 off, 1 on) or ``UNSPECIFIED = -1``. Each attribute has
its own embedding table with one extra row for "unspecified"; the rows of a condition are summed
into one vector that joins the denoiser's time embedding. Training replaces attributes by
"unspecified" at random (:func:`drop_attributes`), so one network is the conditional model for any
subset of attributes and, with all of them unspecified, the unconditional model that
classifier-free guidance (Ho & Salimans, 2022) contrasts against.
"""

from __future__ import annotations

import torch
from torch import nn

UNSPECIFIED = -1


class AttributeEmbedding(nn.Module):
    """(B, A) attribute indices (−1 = unspecified) → (B, dim) summed embeddings.

    Args:
        num_values: number of values of each attribute (2 for a binary one).
        dim: embedding width; equals the denoiser's ``cond_dim``.
    """

    def __init__(self, num_values: list[int], dim: int):
        super().__init__()
        self.num_values = list(num_values)
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim) for n in self.num_values)
        # N(0, 1/A) rows: the sum of A attribute embeddings starts with unit variance per component, as strong
        # as the time embedding it joins. With DiT's std 0.02 a tiny shapes run still ignored its colour
        # condition after 800 steps (colour accuracy 0.29; 0.85 only at 1200); with 1/√A it reached 0.94.
        std = 1.0 / max(1, len(self.num_values)) ** 0.5
        for table in self.tables:
            nn.init.normal_(table.weight, std=std)

    def forward(self, attrs: torch.Tensor) -> torch.Tensor:
        if attrs.shape[1] != len(self.tables):
            raise ValueError(f"expected {len(self.tables)} attributes per example, got {attrs.shape[1]}")
        out = 0
        for a, (table, n) in enumerate(zip(self.tables, self.num_values)):
            idx = attrs[:, a]
            idx = torch.where(idx == UNSPECIFIED, torch.full_like(idx, n), idx)  # last row: unspecified
            out = out + table(idx)
        return out


class ConditionalDenoiser(nn.Module):
    """Wrap a denoiser ``net(x_t, t, cond=vector)`` so that it takes attribute indices instead.

    ``forward(x_t, t, cond=None)``: ``cond`` is a (B, A) LongTensor or None (= all unspecified, the
    unconditional model).
    """

    def __init__(self, net: nn.Module, num_values: list[int], dim: int):
        super().__init__()
        self.net = net
        self.embed = AttributeEmbedding(num_values, dim)

    def unconditional(self, batch: int, device=None) -> torch.Tensor:
        return torch.full((batch, len(self.embed.num_values)), UNSPECIFIED, dtype=torch.long, device=device)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = self.unconditional(x_t.shape[0], x_t.device)
        return self.net(x_t, t, cond=self.embed(cond))


def drop_attributes(attrs: torch.Tensor, p_attribute: float, p_all: float, generator=None) -> torch.Tensor:
    """Condition dropout for classifier-free guidance training.

    Each attribute becomes unspecified independently with probability ``p_attribute``, and every
    attribute of an example at once with probability ``p_all``; the rest are kept.
    """
    if attrs.numel() == 0:
        return attrs
    b, a = attrs.shape
    drop_one = torch.rand(b, a, generator=generator, device=attrs.device) < p_attribute
    drop_all = torch.rand(b, 1, generator=generator, device=attrs.device) < p_all
    return attrs.masked_fill(drop_one | drop_all, UNSPECIFIED)
