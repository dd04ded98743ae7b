#!/usr/bin/env python
"""DDPM on 2-D swiss-roll points: sliced Wasserstein distance of 5,000 samples to 5,000 data points.

    python bench/toy_swissroll.py --minutes 5

The reference is the distance between two independent draws of 5,000 data points (the noise floor of
the metric at this sample size). Target (issue "Stage two core"): samples within 2x that floor after
at most 5 minutes of training on 2 CPU cores.
"""

import argparse
import time

import torch
from common import ROOT, write_results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from latentdiff.builders import build_data
    from latentdiff.config import DataConfig, LDMRunConfig, load_config
    from latentdiff.metrics.distribution import sliced_wasserstein
    from latentdiff.pipeline import LatentDiffusion
    from latentdiff.stages import train_latent_diffusion

    name = f"bench_swissroll_{int(time.time())}"
    cfg = load_config(LDMRunConfig, ROOT / "configs/toy/swissroll.yaml",
                      [f"name={name}", f"out_dir={args.out_dir}", f"train.max_minutes={args.minutes}", *args.overrides])
    trainer = train_latent_diffusion(cfg)
    ldm = LatentDiffusion.from_run(f"{args.out_dir}/{name}")
    g = torch.Generator().manual_seed(1)
    t0 = time.time()
    samples = ldm.sample(args.num, sampler="ddpm", steps=ldm.diffusion.num_timesteps, generator=g)  # the full chain
    sample_s = time.time() - t0
    draw = lambda seed: torch.stack([x for x, _ in build_data(DataConfig(name="swissroll", seed=seed,  # noqa: E731
                                                                         test_size=args.num), "test")])
    data_a, data_b = draw(101), draw(202)
    gp = torch.Generator().manual_seed(0)
    sw_model = sliced_wasserstein(samples, data_a, 1024, generator=gp)
    sw_floor = sliced_wasserstein(data_b, data_a, 1024, generator=torch.Generator().manual_seed(0))
    row = {"train_minutes": trainer.train_seconds / 60, "steps": trainer.step, "sw_samples_vs_data": sw_model,
           "sw_data_vs_data": sw_floor, "ratio": sw_model / sw_floor, "target_ratio": 2.0,
           "ddpm_1000_sampling_s": sample_s}
    write_results("toy_swissroll", [row], list(row))


if __name__ == "__main__":
    main()
