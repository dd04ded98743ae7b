#!/usr/bin/env python
"""Sample a trained latent diffusion run: a PNG grid, optionally an .npz of images, latents and attributes.

    python sample.py --run runs/shapes_ldm_kl --num 64 --attr color=red --attr shape=triangle --guidance 3
    python sample.py --run runs/shapes_ldm_kl --grid-by color --sampler ddim --steps 50
    python sample.py --run runs/fmnist_ldm_rae --num 100 --sampler ddpm --npz samples.npz
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from latentdiff.cli import condition_rows, parse_attrs, user_errors  # noqa: E402
from latentdiff.pipeline import LatentDiffusion  # noqa: E402
from latentdiff.training import flush_denormals, pick_device  # noqa: E402
from latentdiff.viz import image_grid, save_png  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train_diffusion.py run folder")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--batch-size", type=int, default=256, help="samples per reverse-process batch")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None, help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, default=None,
                   help="reverse steps (default: the run's sample.steps with its sampler, else 50 for ddim, all T)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM stochasticity (0 deterministic, 1 ~ DDPM; default: the run's sample.eta)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attr", action="append", default=[], metavar="NAME=VALUE",
                   help="attribute to ask for (repeatable); the rest stay free")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w (1 = conditional, 0 = unconditional; default: the run's)")
    p.add_argument("--grid-by", default=None, metavar="NAME", help="one row per value of this attribute")
    p.add_argument("--checkpoint", choices=["best", "last"], default="last")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="PNG path (default: <run>/samples/sample_<seed>.png)")
    p.add_argument("--npz", default=None, help="also write images (N,C,H,W in [-1,1]), latents and attributes")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with user_errors():
        flush_denormals()
        device = pick_device(args.device)
        ldm = LatentDiffusion.from_run(args.run, checkpoint=args.checkpoint, use_ema=not args.no_ema,
                                       device=device)
        cond, nrow = condition_rows(ldm, args.num, parse_attrs(args.attr), args.grid_by)
        num = cond.shape[0] if cond is not None else args.num
        run_sample = ldm.config.get("sample", {})  # the run's own defaults, so one config file is one run
        guidance = args.guidance if args.guidance is not None else run_sample.get("guidance_scale", 1.0)
        if args.sampler is None:
            args.sampler = run_sample.get("sampler", "ddim")
            args.steps = args.steps if args.steps is not None else run_sample.get("steps")
        if args.sampler == "ddim" and args.steps is None:
            args.steps = 50
        if args.eta is None:
            args.eta = run_sample.get("eta", 0.0) if args.sampler == "ddim" else 0.0
        generator = torch.Generator(device=device).manual_seed(args.seed)
        noise = torch.randn(num, *ldm.latent_shape, generator=generator, device=device)
        images, latents = ldm.sample(num, attrs=cond, guidance_scale=guidance, sampler=args.sampler,
                                     steps=args.steps, eta=args.eta, generator=generator, noise=noise,
                                     progress=not args.no_progress, return_latents=True,
                                     batch_size=args.batch_size)
        if ldm.autoencoder is None:
            from latentdiff.viz import scatter_image

            picture = scatter_image(images)
        else:
            picture = image_grid(images, nrow=nrow)
        out = Path(args.out) if args.out else Path(args.run) / "samples" / f"sample_{args.seed}.png"
        save_png(picture, out)
        print(f"wrote {out}")
        if args.npz:
            arrays = {"images": images.cpu().numpy().astype(np.float32),
                      "latents": latents.cpu().numpy().astype(np.float32)}
            if cond is not None:
                arrays["attributes"] = cond.cpu().numpy()
                arrays["attribute_names"] = np.array(ldm.schema.names)
            Path(args.npz).parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.npz, **arrays)
            print(f"wrote {args.npz}")


if __name__ == "__main__":
    main()
