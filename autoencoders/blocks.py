"""Convolutional encoder and decoder of the stage-one autoencoders.

ResNet-style, as in the LDM first-stage models (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", App. G; itself after Esser et al. 2021, VQGAN): residual blocks of
GroupNorm → SiLU → 3×3 conv, one strided conv per downsampling, nearest-neighbour upsampling + conv
in the decoder, optional single-head self-attention at the lowest resolution.

Cost on a CPU is dominated by the full-resolution layers, so widths grow as resolution drops
(``channels = base_channels * channel_mults[level]``) and the full-resolution level is kept narrow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups; the number of groups always divides ``channels``."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """x + conv(dropout(SiLU(GN(conv(SiLU(GN(x))))))), the pre-activation residual block (He et al. 2016).

    Shapes: (B, channels, H, W) → (B, channels, H, W). Widths change only in the resampling convs.
    """

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(self.dropout(F.silu(self.norm2(h))))


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions (Vaswani et al. 2017, Eq. 1), residual.

    Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # (B, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √C) v
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Middle(nn.Module):
    """The lowest-resolution stage: a residual block, then (optionally) attention and a second block."""

    def __init__(self, channels: int, attention: bool, dropout: float):
        super().__init__()
        layers = [ResBlock(channels, dropout)]
        if attention:
            layers += [Attention(channels), ResBlock(channels, dropout)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Encoder(nn.Module):
    """Image (B, in_channels, S, S) → ``out_features`` per example.

    Spatial latents (``vector_dim=None``): output (B, out_channels, S/f, S/f) with f = 2^(levels-1).
    Vector latents: the lowest-resolution features are flattened and a linear layer maps them to
    (B, vector_dim).

    Args:
        in_channels: image channels.
        image_size: S, side of the (square) input.
        base_channels, channel_mults: level l has ``base_channels * channel_mults[l]`` channels.
        num_res_blocks: residual blocks per level.
        out_channels: channels of the spatial output (2·latent channels for a VAE: mean and log-variance).
        attention: self-attention in the middle stage.
        dropout: dropout probability inside residual blocks.
        vector_dim: width of the flattening head's output, or None for spatial outputs.
    """

    def __init__(self, in_channels: int, image_size: int, base_channels: int, channel_mults: tuple,
                 num_res_blocks: int, out_channels: int, attention: bool, dropout: float,
                 vector_dim: int | None = None):
        super().__init__()
        widths = [base_channels * m for m in channel_mults]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers = []
        for level, width in enumerate(widths):
            layers += [ResBlock(width, dropout) for _ in range(num_res_blocks)]
            if level < len(widths) - 1:  # halve the side and widen, on the (cheaper) low-resolution output
                layers.append(nn.Conv2d(width, widths[level + 1], 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        ch = widths[-1]
        self.mid = Middle(ch, attention, dropout)
        self.norm_out = group_norm(ch)
        side = image_size // 2 ** (len(widths) - 1)
        if vector_dim is None:
            self.head = nn.Conv2d(ch, out_channels, 3, padding=1)
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * side * side, vector_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.head(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent → image (B, out_channels, S, S); the mirror of ``Encoder``.

    Input: (B, latent_channels, S/f, S/f), or (B, vector_dim) when ``vector_dim`` is set (a linear
    layer then unflattens it to the lowest-resolution feature map). The output is the last conv's
    value, unbounded (no tanh): images are in [-1, 1] by training, and callers clamp for display.

    Args: as ``Encoder``; ``out_channels`` are the image channels, ``latent_channels`` the input's.
    """

    def __init__(self, out_channels: int, image_size: int, base_channels: int, channel_mults: tuple,
                 num_res_blocks: int, latent_channels: int, attention: bool, dropout: float,
                 vector_dim: int | None = None):
        super().__init__()
        widths = [base_channels * m for m in channel_mults]
        ch = widths[-1]
        self.side = image_size // 2 ** (len(widths) - 1)
        if vector_dim is None:
            self.conv_in = nn.Conv2d(latent_channels, ch, 3, padding=1)
        else:
            self.conv_in = nn.Sequential(nn.Linear(vector_dim, ch * self.side * self.side),
                                         nn.Unflatten(1, (ch, self.side, self.side)))
        self.mid = Middle(ch, attention, dropout)
        layers = []
        for level in reversed(range(len(widths))):
            layers += [ResBlock(widths[level], dropout) for _ in range(num_res_blocks)]
            if level > 0:  # double the side and narrow to the next level's width in the same conv
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(widths[level], widths[level - 1], 3, padding=1)]
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
