#!/usr/bin/env python
"""How the cost of a diffusion training step grows with image size: latent vs pixel space.

    python bench/scaling.py                 # sizes 32, 64, 128; batch 16
    python bench/scaling.py --quick

Both use latentdiff's UNet (48 channels, one residual block per level, self-attention at the lowest
resolution, which is side/8 in both cases so attention costs the same):
    latent   f = 4 autoencoder codes, 4 x side/4 x side/4 (training reads cached latents, so the
             encoder is not in the step), channel_mults [1, 2]
    pixel    3 x side x side RGB, channel_mults [1, 2, 2, 2] (two more levels to reach side/8)
Each case runs in a fresh process (one thread) that reports the median step time (forward, ε-MSE,
backward, AdamW) and its peak resident memory (ru_maxrss) above the process after imports.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402


def measure(space: str, side: int, batch: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from latentdiff.nets import UNet

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if space == "latent":
        shape, mults = (4, side // 4, side // 4), (1, 2)
    else:
        shape, mults = (3, side, side), (1, 2, 2, 2)
    net = UNet(in_channels=shape[0], channels=48, channel_mults=mults, num_res_blocks=1,
               attention_resolutions=(side // 8,), image_size=shape[-1])
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x, t = torch.randn(batch, *shape), torch.randint(0, 1000, (batch,))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = F.mse_loss(net(x, t), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step allocates
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"step_s": statistics.median(times), "peak_MiB": peak,
            "params_M": sum(p.numel() for p in net.parameters()) / 1e6}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # the child: SPACE SIDE
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.batch, args.steps)))
        return
    if args.quick:
        args.sizes, args.steps, args.batch = [32], 1, 4
    rows = []
    for side in args.sizes:
        row = {"side": side, "batch": args.batch}
        for space in ("latent", "pixel"):
            out = subprocess.run([sys.executable, __file__, "--measure", space, str(side), "--batch",
                                  str(args.batch), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            row.update({f"{space}_step_s": r["step_s"], f"{space}_peak_MiB": r["peak_MiB"],
                        f"{space}_params_M": r["params_M"]})
        row["pixel/latent time"] = row["pixel_step_s"] / row["latent_step_s"]
        row["pixel/latent memory"] = row["pixel_peak_MiB"] / max(row["latent_peak_MiB"], 1e-9)
        rows.append(row)
        print(row, flush=True)
    write_results("scaling", rows, list(rows[0]),
                  extra={"threads": 1, "note": "fresh process per case; shared 2-core machine"})


if __name__ == "__main__":
    main()
