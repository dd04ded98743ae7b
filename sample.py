#!/usr/bin/env python
"""Sample a trained latent diffusion run: a PNG grid, optionally an .npz of images, latents and attributes.

    python sample.py --run runs/shapes_ldm_kl --num 64 --attr color=red --attr shape=triangle --guidance 3
    python sample.py --run runs/shapes_ldm_kl --grid-by color --sampler ddim --steps 50
    python sample.py --run runs/fmnist_ldm_rae --num 100 --sampler ddpm --npz samples.npz
    python sample.py --run runs/shapes_ldm_uncond --classifier --classifier-scale 3 --attr color=red
    python sample.py --run runs/shapes_ldm_kl --edit photo.png --attr color=blue --strength 0.4
    python sample.py --run runs/shapes_ldm_kl --edit photo.png --grid-by color --edit-mode invert

--classifier guides with the noise-conditional classifier of train_classifier.py (default folder <run>/classifier),
also on unconditional runs. --edit encodes an image, noises it to t = strength·T (or DDIM-inverts it there) and
regenerates it with the asked attributes; the PNG shows each original followed by its edits.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from latentdiff.cli import check_sample_args, condition_rows, parse_attrs, user_errors  # noqa: E402
from latentdiff.pipeline import LatentDiffusion  # noqa: E402
from latentdiff.training import flush_denormals, pick_device  # noqa: E402
from latentdiff.viz import image_grid, save_png  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train_diffusion.py run folder")
    p.add_argument("--num", type=int, default=None, help="number of samples (default 64), or of edits per image (4)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per reverse-process batch")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None, help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, default=None,
                   help="reverse steps (default: the run's sample.steps with its sampler, else 50 for ddim, all T)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM stochasticity (0 deterministic, 1 ~ DDPM; default: the run's sample.eta, "
                        "0 for --edit-mode invert)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attr", action="append", default=[], metavar="NAME=VALUE",
                   help="attribute to ask for (repeatable); the rest stay free")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w (1 = conditional, 0 = unconditional; default: the run's)")
    p.add_argument("--grid-by", default=None, metavar="NAME",
                   help="one row per value of this attribute (with --edit: one edit per value)")
    p.add_argument("--classifier", nargs="?", const="", default=None, metavar="DIR",
                   help="classifier guidance with a train_classifier.py classifier (default DIR: <run>/classifier)")
    p.add_argument("--classifier-scale", type=float, default=None,
                   help="classifier guidance strength s (default 3; 0 = no guidance)")
    p.add_argument("--edit", nargs="+", default=None, metavar="IMAGE", help="edit these images instead of sampling")
    p.add_argument("--strength", type=float, default=None,
                   help="--edit: how far to noise, 0 (the reconstruction) to 1 (ignore the input); default 0.4 "
                        "(shapes, SDEdit: reaches the asked colour 96 %% of the time, keeps the size 82 %%)")
    p.add_argument("--edit-mode", choices=["sdedit", "invert"], default=None,
                   help="--edit: add noise (SDEdit, default) or DDIM-invert to t = strength·T")
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
        check_sample_args(args)  # before the model is loaded: a bad flag costs nothing
        if args.edit is None and (args.strength is not None or args.edit_mode is not None):
            raise ValueError("--strength and --edit-mode apply to --edit IMAGE only")
        if args.classifier is None and args.classifier_scale is not None:
            raise ValueError("--classifier-scale needs --classifier (the folder train_classifier.py wrote)")
        flush_denormals()
        device = pick_device(args.device)
        ldm = LatentDiffusion.from_run(args.run, checkpoint=args.checkpoint, use_ema=not args.no_ema,
                                       device=device)
        classifier = None
        if args.classifier is not None:
            if not args.attr and args.grid_by is None:
                raise ValueError("--classifier needs attributes to guide towards: add --attr NAME=VALUE or --grid-by")
            classifier = ldm.load_classifier(args.classifier or Path(args.run) / "classifier")
        guided = dict(classifier=classifier, classifier_scale=3.0 if args.classifier_scale is None
                      else args.classifier_scale) if classifier is not None else {}
        if args.num is None:
            args.num = 4 if args.edit is not None else 64
        per_image = args.num
        if args.edit is not None and args.grid_by is not None and ldm.schema and args.grid_by in ldm.schema.names:
            per_image = ldm.schema.num_values(ldm.schema.names.index(args.grid_by))  # one edit per value
        cond, nrow = condition_rows(ldm, per_image, parse_attrs(args.attr), args.grid_by)
        num = cond.shape[0] if cond is not None else per_image
        run_sample = ldm.config.get("sample", {})  # the run's own defaults, so one config file is one run
        guidance = args.guidance if args.guidance is not None else run_sample.get("guidance_scale", 1.0)
        if args.sampler is None:
            args.sampler = run_sample.get("sampler", "ddim")
            args.steps = args.steps if args.steps is not None else run_sample.get("steps")
        if args.sampler == "ddim" and args.steps is None:
            args.steps = 50
        if args.eta is None and args.edit_mode == "invert":
            args.eta = 0.0  # the inverted x_t only leads back to the image along the deterministic path
        if args.eta is None:
            args.eta = run_sample.get("eta", 0.0) if args.sampler == "ddim" else 0.0
        generator = torch.Generator(device=device).manual_seed(args.seed)
        if args.edit is not None:
            edit(ldm, args, cond, num, guidance, generator, guided)
            return
        noise = torch.randn(num, *ldm.latent_shape, generator=generator, device=device)
        images, latents = ldm.sample(num, attrs=cond, guidance_scale=guidance, sampler=args.sampler,
                                     steps=args.steps, eta=args.eta, generator=generator, noise=noise,
                                     progress=not args.no_progress, return_latents=True,
                                     batch_size=args.batch_size, **guided)
        if ldm.autoencoder is None:
            from latentdiff.viz import scatter_image

            picture = scatter_image(images)
        else:
            picture = image_grid(images, nrow=nrow)
        out = Path(args.out) if args.out else Path(args.run) / "samples" / f"sample_{args.seed}.png"
        save_png(picture, out)
        print(f"wrote {out}")
        if args.npz:
            write_npz(args.npz, ldm, cond, images=images, latents=latents)


def edit(ldm, args, cond, per_image, guidance, generator, guided):
    """--edit: one PNG row per input image, the original and then its ``per_image`` edits."""
    originals = torch.stack([ldm.read_image(path) for path in args.edit]).to(ldm.device)
    n = len(args.edit)
    images = originals.repeat_interleave(per_image, dim=0)
    attrs = cond.repeat(n, 1) if cond is not None else None
    given = {k: v for k, v in (("strength", args.strength), ("mode", args.edit_mode)) if v is not None}
    edits = ldm.edit(images, attrs=attrs, guidance_scale=guidance, sampler=args.sampler, steps=args.steps,
                     eta=args.eta, generator=generator, progress=not args.no_progress, **given, **guided)
    rows = torch.cat([originals.unsqueeze(1), edits.view(n, per_image, *edits.shape[1:])], dim=1)
    out = Path(args.out) if args.out else Path(args.run) / "samples" / f"edit_{Path(args.edit[0]).stem}_{args.seed}.png"
    save_png(image_grid(rows.flatten(0, 1), nrow=per_image + 1), out)
    print(f"wrote {out}")
    if args.npz:
        write_npz(args.npz, ldm, attrs, originals=originals, images=edits)


def write_npz(path, ldm, attrs, **tensors):
    """``--npz``: the tensors as float32 arrays, and the asked ``attributes`` (N, A) with their names."""
    arrays = {name: t.cpu().numpy().astype(np.float32) for name, t in tensors.items()}
    if attrs is not None:
        arrays["attributes"] = attrs.cpu().numpy()
        arrays["attribute_names"] = np.array(ldm.schema.names)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
