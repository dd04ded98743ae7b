#!/usr/bin/env python
"""Sampling images/s, decoding included: latent diffusion vs pixel-space diffusion at equal step counts.

    python bench/sampling_speed.py             # DDIM 10 / 50 steps, batches of 16 / 64 / 256 images
    python bench/sampling_speed.py --steps 10 50 100 --batch 256
    python bench/sampling_speed.py --quick

Latent: latentdiff's denoiser (configs/fashion_mnist/ldm_kl.yaml, on 4x8x8 latents) run by
``GaussianDiffusion.sample`` (DDIM), then the VAE decoder of configs/fashion_mnist/ae_kl.yaml to
1x32x32 images. Pixel: the peer of bench/pixel_ddpm_peer.py — diffusers' UNet2DModel (32, 64, 64)
on 1x32x32 with diffusers' DDIMScheduler. Random weights (speed does not depend on them); one thread;
interleaved rounds, median. The ratio latent/pixel in images/s is the speed-up (target ≥ 10x).
The ratio grows with the batch: the small 8x8 latent maps use the CPU's convolutions better when more
of them go through at once, while the 32x32 pixel maps already fill it (and fall out of cache at 256);
256 is sample.py's default batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.batch, args.rounds = [5], [8], 1
    try:
        from diffusers import DDIMScheduler
    except ImportError:
        sys.exit("error: this benchmark compares with diffusers: pip install -r requirements-bench.txt")
    import torch
    from pixel_ddpm_peer import build_peer

    from latentdiff.builders import build_autoencoder_from_config, build_denoiser, build_diffusion
    from latentdiff.config import AERunConfig, LDMRunConfig, load_config

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    ae_cfg = load_config(AERunConfig, str(ROOT / "configs/fashion_mnist/ae_kl.yaml"), [])
    ldm_cfg = load_config(LDMRunConfig, str(ROOT / "configs/fashion_mnist/ldm_kl.yaml"), ["ae.run=null"])
    autoencoder = build_autoencoder_from_config(ae_cfg.model, (1, 32, 32)).eval()
    latent_shape = tuple(autoencoder.latent_shape)
    denoiser = build_denoiser(ldm_cfg.denoiser, latent_shape).eval()
    diffusion = build_diffusion(ldm_cfg.diffusion)
    peer = build_peer((32, 64, 64), 1).eval()
    ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)

    @torch.no_grad()
    def latent(steps, batch):
        z = diffusion.sample(denoiser, (batch, *latent_shape), sampler="ddim", steps=steps)
        return autoencoder.decode(z)

    @torch.no_grad()
    def pixel(steps, batch):
        ddim.set_timesteps(steps)
        x = torch.randn(batch, 1, 32, 32)
        for t in ddim.timesteps:
            x = ddim.step(peer(x, t).sample, t, x, eta=0.0).prev_sample
        return x

    n_ours = sum(q.numel() for q in denoiser.parameters()) + sum(q.numel() for q in autoencoder.decoder.parameters())
    n_peer = sum(q.numel() for q in peer.parameters())
    rows = []
    for batch in args.batch:
        for steps in args.steps:
            latent(steps, batch)  # warm-up
            pixel(min(steps, 5), batch)
            times = {"latent": [], "pixel": []}
            for _ in range(args.rounds):
                for name, fn in (("latent", latent), ("pixel", pixel)):
                    start = time.perf_counter()
                    fn(steps, batch)
                    times[name].append(time.perf_counter() - start)
            sec = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"batch": batch, "ddim_steps": steps, "latent_img_per_s": batch / sec["latent"],
                         "pixel_img_per_s": batch / sec["pixel"], "latent/pixel": sec["pixel"] / sec["latent"]})
            print(rows[-1], flush=True)
    write_results("sampling_speed", rows, list(rows[0]),
                  extra={"latent": f"latentdiff UNet on {latent_shape} + VAE decoder, {n_ours / 1e6:.2f} M params",
                         "pixel": f"diffusers UNet2DModel (32, 64, 64) on 1x32x32, {n_peer / 1e6:.2f} M params",
                         "threads": 1, "rounds": args.rounds, "note": "random weights; shared 2-core machine"})


if __name__ == "__main__":
    main()
