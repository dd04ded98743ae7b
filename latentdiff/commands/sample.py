#!/usr/bin/env python
"""Sample a trained latent diffusion run: a PNG grid, optionally an .npz of images, latents and attributes.

    python sample.py --run runs/shapes_ldm_kl --num 64 --attr color=red --attr shape=triangle --guidance 3
    python sample.py --run runs/shapes_ldm_kl --grid-by color --sampler ddim --steps 50
    python sample.py --run runs/fmnist_ldm_rae --num 100 --sampler ddpm --npz samples.npz
    python sample.py --run runs/shapes_ldm_uncond --classifier --classifier-scale 3 --attr color=red
    python sample.py --run runs/shapes_ldm_kl --edit photo.png --attr color=blue --strength 0.4
    python sample.py --run runs/shapes_ldm_kl --edit photo.png --grid-by color --edit-mode invert
    python sample.py --run runs/shapes_ldm_kl --inpaint photo.png --mask right_half.png --sampler ddpm --resample 5

--classifier guides with the noise-conditional classifier of train_classifier.py (default folder <run>/classifier),
also on unconditional runs. --edit encodes an image, noises it to t = strength·T (or DDIM-inverts it there) and
regenerates it with the asked attributes; the PNG shows each original followed by its edits. --inpaint fills the
part of each image where the --mask PNG (the run's image size, pure black and white, nothing in between) is black,
RePaint style; the PNG shows each original, the kept part, and the fills. An all-black mask keeps nothing (the fills
are plain samples); an all-white one, or grey pixels, are refused.

A setting the run cannot honour is refused in one line (exit 2) before anything is sampled, never clipped or
ignored: --steps above the run's T, and on an unconditional run --guidance (other than 1), --guidance-interval,
--unasked data, and --attr / --grid-by without --classifier.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from latentdiff.bundle import is_bundle
from latentdiff.cli import (
    check_output_path,
    check_sample_args,
    condition_rows,
    parse_attrs,
    read_mask,
    user_errors,
)
from latentdiff.diffusion import check_guidance_interval
from latentdiff.pipeline import LatentDiffusion
from latentdiff.runtime import flush_denormals, pick_device
from latentdiff.viz import image_grid, save_png


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train_diffusion.py run folder, or an export.py folder")
    p.add_argument("--num", type=int, default=None, help="number of samples (default 64), or of edits per image (4)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per reverse-process batch (default 256)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm_solver++"], default=None,
                   help="default: the run's sample.sampler, ddim for --edit-mode invert (dpm_solver++: few-step ODE "
                        "solver, DPM-Solver++(2M))")
    p.add_argument("--steps", type=int, default=None,
                   help="reverse steps, 1 to the run's T (default: the run's sample.steps with its sampler, else "
                        "50 for ddim and dpm_solver++, all T for ddpm)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM stochasticity (0 deterministic, 1 ~ DDPM; default: the run's sample.eta, "
                        "0 for --edit-mode invert)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attr", action="append", default=[], metavar="NAME=VALUE",
                   help="attribute to ask for (repeatable); the rest as --unasked says")
    p.add_argument("--unasked", choices=["model", "data"], default=None,
                   help="attributes not asked for: drawn from the training data's combinations (data) or left "
                        "to the network (model); default: the run's sample.unasked")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w (1 = conditional, 0 = unconditional; default: the run's)")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where LO <= t/T <= HI, the plain conditional model elsewhere (default: the "
                        "run's sample.guidance_interval; 0 1 guides everywhere)")
    p.add_argument("--autoguidance", type=float, default=None, metavar="W_A",
                   help="autoguidance scale w_a (Karras et al. 2024; 1 = off; default: the run's "
                        "sample.autoguidance_scale): extrapolate away from the run's guide (train.guide_at) or --guide")
    p.add_argument("--guide", default=None, metavar="RUN",
                   help="guide with this run or exported model (same autoencoder and latents) instead of the run's own")
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
    p.add_argument("--inpaint", nargs="+", default=None, metavar="IMAGE", help="fill the masked part of these images")
    p.add_argument("--mask", default=None, metavar="MASK.png",
                   help="--inpaint: white (255) keep, black (0) fill, nothing else")
    p.add_argument("--resample", type=int, default=None, help="--inpaint: RePaint jumps per step (default 1; "
                   "R > 1 needs --sampler ddpm or ddim with --eta > 0)")
    p.add_argument("--no-paste-back", action="store_true", help="--inpaint: keep the decoded pixels everywhere")
    p.add_argument("--checkpoint", choices=["best", "last"], default="last")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None,
                   help="PNG path (default: <run>/samples/sample_<seed>.png; ./samples/ for an exported model)")
    p.add_argument("--npz", default=None, help="also write images (N,C,H,W in [-1,1]), latents and attributes")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with user_errors():
        check_sample_args(args)  # before the model is loaded: a bad flag costs nothing
        if args.edit is None and (args.strength is not None or args.edit_mode is not None):
            raise ValueError("--strength and --edit-mode apply to --edit IMAGE only")
        if args.unasked is not None and (args.edit is not None or args.inpaint is not None):
            raise ValueError("--unasked applies to sampling only; --edit and --inpaint read the attributes not "
                             "asked for from the input image")
        if args.inpaint is None and (args.mask or args.resample is not None or args.no_paste_back):
            raise ValueError("--mask, --resample and --no-paste-back apply to --inpaint IMAGE only")
        if args.inpaint is not None and (args.mask is None or args.edit is not None or args.classifier is not None):
            raise ValueError("--inpaint needs --mask MASK.png, and goes without --edit and --classifier")
        if args.classifier is None and args.classifier_scale is not None:
            raise ValueError("--classifier-scale needs --classifier (the folder train_classifier.py wrote)")
        keep = read_mask(args.mask) if args.inpaint is not None else None  # grey or all-white: refused here
        out = Path(args.out) if args.out else default_out(args)
        if args.out is None:  # the default path is checked as --out is: a read-only run folder costs nothing
            check_output_path("--out (default)", out)
        flush_denormals()
        device = pick_device(args.device)
        ldm = LatentDiffusion.from_run(args.run, checkpoint=args.checkpoint, use_ema=not args.no_ema,
                                       device=device)
        if args.guide is not None:
            ldm.use_guide(args.guide)
        classifier = None
        if args.classifier is not None:
            if not args.attr and args.grid_by is None:
                raise ValueError("--classifier needs attributes to guide towards: add --attr NAME=VALUE or --grid-by")
            classifier = ldm.load_classifier(args.classifier or Path(args.run) / "classifier")
        guided = dict(classifier=classifier, classifier_scale=3.0 if args.classifier_scale is None
                      else args.classifier_scale) if classifier is not None else {}
        if args.num is None:
            args.num = 4 if args.edit is not None or args.inpaint is not None else 64
        per_image = args.num
        if args.edit is not None and args.grid_by is not None and ldm.schema and args.grid_by in ldm.schema.names:
            per_image = ldm.schema.num_values(ldm.schema.names.index(args.grid_by))  # one edit per value
        cond, nrow = condition_rows(ldm, per_image, parse_attrs(args.attr), args.grid_by)
        num = cond.shape[0] if cond is not None else per_image
        generator = torch.Generator(device=device).manual_seed(args.seed)
        settings = dict(sampler=args.sampler, steps=args.steps, eta=args.eta, guidance_scale=args.guidance,
                        autoguidance_scale=args.autoguidance)
        if args.guidance_interval is not None:
            settings["guidance_interval"] = check_guidance_interval(args.guidance_interval)
        ldm.sampling_settings(**settings, unasked=args.unasked)  # steps > T, guidance on an unconditional run: refused
        if args.inpaint is not None:
            inpaint(ldm, args, keep, cond, num, settings, generator, out)
            return
        if args.edit is not None:
            edit(ldm, args, cond, num, settings, generator, guided, out)
            return
        # Unset settings are the run's (LatentDiffusion.sampling_settings): the same call as the Python API's.
        images, latents, cond = ldm.sample(num, attrs=cond, generator=generator, progress=not args.no_progress,
                                           return_latents=True, return_conditions=True, batch_size=args.batch_size,
                                           unasked=args.unasked, **settings, **guided)
        if ldm.autoencoder is None:
            from latentdiff.viz import scatter_image

            picture = scatter_image(images)
        else:
            picture = image_grid(images, nrow=nrow)
        save_png(picture, out)
        print(f"wrote {out}")
        if args.npz:
            write_npz(args.npz, ldm, cond, images=images, latents=latents)


def edit(ldm, args, cond, per_image, settings, generator, guided, out):
    """--edit: one PNG row per input image, the original and then its ``per_image`` edits."""
    originals = torch.stack([ldm.read_image(path) for path in args.edit]).to(ldm.device)
    n = len(args.edit)
    images = originals.repeat_interleave(per_image, dim=0)
    attrs = cond.repeat(n, 1) if cond is not None else None
    given = {k: v for k, v in (("strength", args.strength), ("mode", args.edit_mode)) if v is not None}
    edits = ldm.edit(images, attrs=attrs, generator=generator, progress=not args.no_progress, **settings, **given,
                     **guided)
    rows = torch.cat([originals.unsqueeze(1), edits.view(n, per_image, *edits.shape[1:])], dim=1)
    save_png(image_grid(rows.flatten(0, 1), nrow=per_image + 1), out)
    print(f"wrote {out}")
    if args.npz:
        write_npz(args.npz, ldm, attrs, originals=originals, images=edits)


def inpaint(ldm, args, keep, cond, per_image, settings, generator, out):
    """--inpaint: one PNG row per input image: the original, its kept part (the rest black), ``per_image`` fills.
    ``keep``: the --mask as read by ``read_mask`` ((H, W), True = keep)."""
    originals = torch.stack([ldm.read_image(path) for path in args.inpaint]).to(ldm.device)
    height, width = originals.shape[-2:]
    if keep.shape != (height, width):
        raise ValueError(f"the mask {args.mask} is {keep.shape[1]}×{keep.shape[0]} pixels; this run's images are "
                         f"{width}×{height}")
    mask = torch.from_numpy(keep).float().view(1, 1, height, width).to(ldm.device)
    n = len(args.inpaint)
    attrs = cond.repeat(n, 1) if cond is not None else None
    fills = ldm.inpaint(originals.repeat_interleave(per_image, dim=0), mask, attrs=attrs, **settings,
                        resample=1 if args.resample is None else args.resample, paste_back=not args.no_paste_back,
                        generator=generator, progress=not args.no_progress)
    kept = originals * mask + (mask - 1)  # the filled region black (−1)
    rows = torch.cat([originals.unsqueeze(1), kept.unsqueeze(1), fills.view(n, per_image, *fills.shape[1:])], dim=1)
    save_png(image_grid(rows.flatten(0, 1), nrow=per_image + 2), out)
    print(f"wrote {out}")
    if args.npz:
        write_npz(args.npz, ldm, attrs, originals=originals, mask=mask, images=fills)


def default_out(args) -> Path:
    """The PNG path without --out: ``sample_<seed>.png``, ``edit_<first image>_<seed>.png`` or
    ``inpaint_<first image>_<seed>.png`` in the run's samples/ folder; for an exported model in ./samples (an
    export is a model to hand on, not a place to collect outputs)."""
    folder = Path("samples") if is_bundle(args.run) else Path(args.run) / "samples"
    if args.edit is not None:
        return folder / f"edit_{Path(args.edit[0]).stem}_{args.seed}.png"
    if args.inpaint is not None:
        return folder / f"inpaint_{Path(args.inpaint[0]).stem}_{args.seed}.png"
    return folder / f"sample_{args.seed}.png"


def write_npz(path, ldm, attrs, **tensors):
    """``--npz``: the tensors as float32 arrays, and the ``attributes`` (N, A) each image was asked for (with
    ``--unasked data`` including the ones drawn from the data; −1 = left to the network), with their names."""
    arrays = {name: t.cpu().numpy().astype(np.float32) for name, t in tensors.items()}
    if attrs is not None:
        arrays["attributes"] = attrs.cpu().numpy()
        arrays["attribute_names"] = np.array(ldm.schema.names)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
