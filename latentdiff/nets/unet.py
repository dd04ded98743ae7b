"""A small UNet ε-network for spatial latents (B, C, H, W), after Ho et al. 2020 (App. B) and
Nichol & Dhariwal 2021: GroupNorm + SiLU residual blocks that receive the timestep embedding,
multi-head self-attention at chosen resolutions, and skip connections from every down layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.nets.embeddings import TimestepEmbedding


class ResBlock(nn.Module):
    """x + Conv(Dropout(SiLU(GN(Conv(SiLU(GN(x))) + Linear(emb))))); a 1×1 conv skip when widths differ.

    The second conv starts at zero so every block starts as the identity (Nichol & Dhariwal's code).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """x + Proj(MultiHeadAttention(GN(x))) over the H·W positions (Vaswani et al. 2017, Eq. 1, per head)."""

    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"UNet: {ch} channels do not split into num_heads={num_heads} heads; "
                             f"choose num_heads dividing every level's width")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)  # starts as the identity, like the residual blocks
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(tokens).view(b, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).view(b, c, h, w)


class Layer(nn.Module):
    """One UNet layer: a residual block, then self-attention when this resolution has it."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int, attention: bool,
                 num_heads: int):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout, groups)
        self.attn = SelfAttention(out_ch, num_heads, groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """ε-network for (B, C, H, W) latents: ``forward(x, t, cond=None)`` → (B, out_channels, H, W).

    Args:
        in_channels: C of the input.
        out_channels: channels of the output (default: in_channels).
        channels: width of the first level.
        channel_mults: width multiplier of each level; there are len(channel_mults) levels and a 2×
            down/upsampling between consecutive ones, so H and W must be divisible by 2^(levels−1).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides (e.g. 4 for 4×4 maps) that get self-attention after
            each residual block; the middle block always has one. Needs ``image_size``.
        dropout: inside the residual blocks.
        num_heads: attention heads.
        cond_dim: width of an optional (B, cond_dim) float condition, projected and added to the time
            embedding; None for an unconditional network.
        groups: GroupNorm groups (default: gcd(channels, 32), Wu & He 2018's 32 where it divides).
        image_size: H of the inputs the attention resolutions refer to.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, channels: int = 64,
                 channel_mults: tuple = (1, 2), num_res_blocks: int = 2, attention_resolutions: tuple = (),
                 dropout: float = 0.0, num_heads: int = 4, cond_dim: int | None = None,
                 groups: int | None = None, image_size: int | None = None):
        super().__init__()
        groups = groups or math.gcd(channels, 32)
        if channels % groups:
            raise ValueError(f"UNet: channels={channels} is not divisible by groups={groups}")
        if attention_resolutions and image_size is None:
            raise ValueError("UNet: attention_resolutions are feature-map sides; pass image_size (the "
                             "input H) so the levels they name are known")
        out_channels = out_channels or in_channels
        levels = len(channel_mults)
        resolutions = [image_size // 2**level for level in range(levels)] if image_size else []
        unknown = set(attention_resolutions) - set(resolutions)
        if unknown:
            raise ValueError(f"UNet: attention_resolutions {sorted(unknown)} match no level; the levels of "
                             f"image_size={image_size} have sides {resolutions}")
        self.levels, self.cond_dim = levels, cond_dim
        emb_dim = 4 * channels
        self.time_embed = TimestepEmbedding(channels, emb_dim)
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        def attends(level):
            return bool(resolutions) and resolutions[level] in attention_resolutions

        self.down = nn.ModuleList()
        skip_widths, width = [channels], channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(Layer(width, channels * mult, emb_dim, dropout, groups, attends(level),
                                       num_heads))
                width = channels * mult
                skip_widths.append(width)
            if level < levels - 1:
                self.down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skip_widths.append(width)
        self.mid = nn.ModuleList([Layer(width, width, emb_dim, dropout, groups, True, num_heads),
                                  Layer(width, width, emb_dim, dropout, groups, False, num_heads)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(Layer(width + skip_widths.pop(), channels * mult, emb_dim, dropout, groups,
                                     attends(level), num_heads))
                width = channels * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(width, width, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(groups, width), nn.SiLU(),
                                 nn.Conv2d(width, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # starts as ε̂ = 0, the best constant guess of unit noise
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"UNet expects (B, C, H, W) with H and W divisible by {factor}, "
                             f"got {tuple(x.shape)}")
        emb = self.time_embed(t)
        if cond is not None:
            if self.cond_proj is None:
                raise ValueError("this UNet was built without cond_dim; it takes no condition")
            emb = emb + self.cond_proj(cond.to(emb.dtype))
        emb = F.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, Layer) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, Layer) else layer(h)
        return self.out(h)
