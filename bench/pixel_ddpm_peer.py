#!/usr/bin/env python
"""The pixel-space peer: a DDPM built from Hugging Face diffusers, trained for a fixed CPU time.

    python bench/pixel_ddpm_peer.py --minutes 44          # Fashion-MNIST, one thread, then 1000 DDIM-50 samples
    python evaluate.py --run runs/fashion_mnist_ldm_kl --samples pixel_ddpm=runs/bench/pixel_ddpm_peer/samples.npz

Issue #7 compares latent diffusion with pixel diffusion at equal CPU training time. The peer is
diffusers' ``UNet2DModel`` with its ``DDPMScheduler`` (the same linear β schedule, 1e-4 … 0.02 over
T = 1000, and the ε objective) trained on the same 32×32 Fashion-MNIST images in [-1, 1], with AdamW,
a warm-up, a cosine learning rate over the CPU-time budget (so it ends annealed whatever the speed) and
diffusers' ``EMAModel``; its EMA weights sample with ``DDIMScheduler`` (η = 0). Nothing of latentdiff
is used except the dataset loader, so the comparison measures the peer as its users would build it.

Writes <out-dir>/{model.pt, samples.npz (images N×C×H×W in [-1, 1]), samples.png} and
bench/results/pixel_ddpm_peer.json (steps, images seen, training and sampling images/s).
Needs the bench extra: pip install -r requirements-bench.txt.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402


def build_peer(channels: tuple[int, ...], layers_per_block: int, in_channels: int = 1, size: int = 32):
    """diffusers' UNet2DModel, attention at the lowest resolution (as in its unconditional examples)."""
    from diffusers import UNet2DModel

    down = ["DownBlock2D"] * (len(channels) - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (len(channels) - 1)
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels,
                       layers_per_block=layers_per_block, block_out_channels=channels,
                       down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=44.0,
                   help="training CPU time of this process (the LDM's AE + LDM budget: 13.6 + 30 min on one thread)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--channels", default="32,64,64")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--num", type=int, default=1000, help="samples to draw after training")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "bench" / "pixel_ddpm_peer"))
    p.add_argument("--quick", action="store_true", help="a few seconds of training, 16 samples, 5 steps")
    args = p.parse_args()
    if args.quick:
        args.minutes, args.num, args.steps, args.warmup = min(args.minutes, 0.2), 16, 5, 5

    try:
        from diffusers import DDIMScheduler, DDPMScheduler
        from diffusers.training_utils import EMAModel
    except ImportError:
        sys.exit("error: the pixel-space peer needs diffusers: pip install -r requirements-bench.txt")
    import numpy as np
    import torch
    import torch.nn.functional as F

    from latentdiff.data import build_dataset
    from latentdiff.viz import image_grid, save_png

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    data = build_dataset("fashion_mnist", "train")
    images = torch.stack([data[i][0] for i in range(len(data))])  # (N, 1, 32, 32) in [-1, 1]
    channels = tuple(int(c) for c in args.channels.split(","))
    model = build_peer(channels, args.layers_per_block, images.shape[1], images.shape[-1])
    n_params = sum(q.numel() for q in model.parameters())
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True)
    print(f"peer: diffusers UNet2DModel {channels} x{args.layers_per_block}, {n_params / 1e6:.2f} M parameters; "
          f"{len(images)} images {tuple(images.shape[1:])}; {args.minutes} min on {args.threads} thread(s)",
          flush=True)

    # The budget is this process's CPU time, not wall time: on a shared machine wall time would hand the
    # peer fewer cycles than the latent model had. With one thread the two are equal on a quiet machine.
    budget, start, wall_start, step = 60 * args.minutes, time.process_time(), time.time(), 0
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    while (elapsed := time.process_time() - start) < budget:
        # warm-up, then cosine over the time budget: the schedule ends annealed whatever the speed
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        for group in opt.param_groups:
            group["lr"] = lr
        x0 = images[torch.randint(0, len(images), (args.batch_size,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=g)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        step += 1
        if step % 200 == 0:
            speed = step * args.batch_size / elapsed
            print(f"step {step} loss={loss.item():.4f} lr={lr:.2e} {speed:.1f} img per CPU-s", flush=True)
    train_seconds, wall_seconds = time.process_time() - start, time.time() - wall_start
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "step": step, "args": vars(args)},
               out / "model.pt")

    ema.copy_to(model.parameters())
    model.eval()
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(args.steps)
    gen = torch.Generator().manual_seed(args.seed + 1)
    samples, t0 = [], time.time()
    with torch.no_grad():
        for b in range(0, args.num, 250):
            x = torch.randn(min(250, args.num - b), *images.shape[1:], generator=gen)
            for t in ddim.timesteps:
                x = ddim.step(model(x, t).sample, t, x, eta=0.0).prev_sample
            samples.append(x.clamp(-1, 1))
    sample_seconds = time.time() - t0
    samples = torch.cat(samples)
    np.savez(out / "samples.npz", images=samples.numpy().astype(np.float32))
    save_png(image_grid(samples[:100], nrow=10), out / "samples.png")
    row = {"peer": "diffusers UNet2DModel + DDPMScheduler", "params_M": n_params / 1e6,
           "cpu_minutes": train_seconds / 60, "wall_minutes": wall_seconds / 60,
           "steps": step, "batch": args.batch_size, "train_img_per_cpu_s": step * args.batch_size / train_seconds,
           "ddim_steps": args.steps, "sample_img_per_s": args.num / sample_seconds}
    write_results("pixel_ddpm_peer" + ("_quick" if args.quick else ""), [row], list(row),
                  extra={"threads": args.threads, "samples": str(out / "samples.npz"), "args": vars(args)})


if __name__ == "__main__":
    main()
