#!/usr/bin/env python
"""Denoiser training step, images/s: latentdiff's UNet vs diffusers' UNet2DModel at a matched parameter count.

    python bench/denoiser_speed.py            # 4x8x8 latents (batch 128) and 1x32x32 pixels (batch 64)
    python bench/denoiser_speed.py --quick

Ours is built by ``latentdiff.builders.build_denoiser`` from configs/fashion_mnist/ldm_kl.yaml's
``denoiser`` section (unconditional, so both networks do the same job); for pixels the same section
with one more level. The peer is diffusers' UNet2DModel with the same topology — two (three) levels of
(c, 2c[, 2c]) channels, one residual block per level, attention at the lowest resolution — and its base
width c searched so its parameter count is the closest to ours. A step is forward, ε-MSE, backward and
AdamW. Both are timed in one process, interleaved round by round, one thread; the median step is
reported with the ratio ours/peer in images per second (target: ≥ 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402


def peer_unet(width: int, levels: int, in_channels: int, size: int):
    from diffusers import UNet2DModel

    channels = tuple([width] + [2 * width] * (levels - 1))
    down = ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (levels - 1)
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
                       block_out_channels=channels, down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=8, attention_head_dim=8)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_peer(target: int, levels: int, in_channels: int, size: int):
    """The peer whose parameter count is closest to ``target`` over base widths 8, 16, ..., 256."""
    best = min(range(8, 257, 8), key=lambda w: abs(count(peer_unet(w, levels, in_channels, size)) - target))
    return peer_unet(best, levels, in_channels, size), best


def time_steps(models: dict, shape: tuple, rounds: int, steps: int) -> dict:
    """Median seconds per training step of each model, interleaved over rounds."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(shape)
    t = torch.randint(0, 1000, (shape[0],))
    opts = {name: torch.optim.AdamW(m.parameters(), 1e-4) for name, m in models.items()}

    def step(name):
        m = models[name]
        out = m(x, t)
        out = out.sample if hasattr(out, "sample") else out
        loss = F.mse_loss(out, x)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    for name in models:  # warm-up
        step(name)
        step(name)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 2
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit("error: this benchmark compares with diffusers: pip install -r requirements-bench.txt")
    import torch

    from latentdiff.builders import build_denoiser
    from latentdiff.config import LDMRunConfig, load_config

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cfg = load_config(LDMRunConfig, str(ROOT / "configs/fashion_mnist/ldm_kl.yaml"), ["ae.run=null"]).denoiser
    rows = []
    cases = [("latent 4x8x8", (4, 8, 8), 128, list(cfg.channel_mults), list(cfg.attention_resolutions)),
             ("pixels 1x32x32", (1, 32, 32), 64, list(cfg.channel_mults) + [cfg.channel_mults[-1]], [8])]
    for name, shape, batch, mults, attention in cases:
        cfg.channel_mults, cfg.attention_resolutions = mults, attention
        ours = build_denoiser(cfg, shape)
        peer, width = matched_peer(count(ours), len(mults), shape[0], shape[-1])
        sec = time_steps({"ours": ours, "diffusers": peer}, (batch, *shape), args.rounds, args.steps)
        rows.append({"input": name, "batch": batch, "ours_params_M": count(ours) / 1e6,
                     "diffusers_params_M": count(peer) / 1e6, "diffusers_width": width,
                     "ours_img_per_s": batch / sec["ours"], "diffusers_img_per_s": batch / sec["diffusers"],
                     "ours/diffusers": sec["diffusers"] / sec["ours"]})
        print(rows[-1], flush=True)
    write_results("denoiser_speed", rows, list(rows[0]),
                  extra={"peer": f"diffusers {diffusers.__version__} UNet2DModel", "threads": 1,
                         "rounds": args.rounds, "steps_per_round": args.steps,
                         "note": "median over interleaved rounds; shared 2-core machine"})


if __name__ == "__main__":
    main()
