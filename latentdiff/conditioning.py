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


class AttributePrior:
    """The training split's attribute combinations and how often each occurs: p(a) as the data has it.

    Asking a conditional model for one attribute ("red") leaves the others to the model; with classifier-free
    guidance at a high weight they collapse onto the combinations its implicit classifier finds easiest
    (measured on shapes: asking red gave 87 large vs 9 small shapes). ``complete`` instead draws every attribute
    not asked for from the data's conditional p(a_unasked | a_asked) and conditions on all of them, so

        p(x | red) = Σ_{a_unasked} p(a_unasked | red) · p(x | red, a_unasked)

    is sampled exactly as far as the fully conditioned model is right: the unasked attributes spread as in the
    data, and nothing needs the network's own, sharpened, marginal.

    Args:
        rows: (K, A) LongTensor, the distinct label rows of the training split (−1 where a label is missing).
        counts: (K,) how many training examples carry each row.
    """

    def __init__(self, rows: torch.Tensor, counts: torch.Tensor):
        rows, counts = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(counts, dtype=torch.long)
        if rows.dim() != 2 or counts.shape != (rows.shape[0],) or rows.shape[0] == 0 or (counts <= 0).any():
            raise ValueError(f"AttributePrior: rows (K, A) and K positive counts, got {tuple(rows.shape)} rows "
                             f"and {tuple(counts.shape)} counts")
        self.rows, self.counts = rows, counts

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> AttributePrior:
        """The prior of an (N, A) label tensor (every training example's attributes)."""
        rows, counts = torch.unique(torch.as_tensor(labels, dtype=torch.long), dim=0, return_counts=True)
        return cls(rows, counts)

    def state(self) -> dict:
        return {"rows": self.rows.clone(), "counts": self.counts.clone()}

    @classmethod
    def from_state(cls, state: dict) -> AttributePrior:
        return cls(state["rows"], state["counts"])

    def complete(self, attrs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, A) conditions → the same with every UNSPECIFIED entry drawn from p(a_unasked | a_asked).

        Rows that ask for everything are returned as they are, and so are rows whose asked combination no
        training example carries (the data says nothing about the rest; the model keeps them). Rows asking
        the same thing share one lookup, then draw independently (``generator``, on the CPU).
        """
        attrs = torch.as_tensor(attrs, dtype=torch.long)
        out = attrs.clone().cpu()
        if attrs.shape[1] != self.rows.shape[1]:
            raise ValueError(f"expected {self.rows.shape[1]} attributes per condition, got {attrs.shape[1]}")
        patterns, which = torch.unique(out, dim=0, return_inverse=True)
        for p, pattern in enumerate(patterns):
            asked = pattern != UNSPECIFIED
            if asked.all():
                continue
            matches = (self.rows[:, asked] == pattern[asked]).all(dim=1)
            if not matches.any():
                continue
            members = (which == p).nonzero().squeeze(1)
            weights = self.counts[matches].double()
            draws = torch.multinomial(weights, len(members), replacement=True, generator=generator)
            out[members] = self.rows[matches][draws]  # a matching row agrees with every asked entry
        return out.to(attrs.device)
