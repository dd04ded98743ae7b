#!/usr/bin/env python
"""Pictures of a trained run: the forward and reverse processes, interpolations, attribute grids.

    python visualize.py forward --run runs/shapes_ldm_kl --out forward.gif        # q(x_t|x0), decoded per frame
    python visualize.py forward --run runs/toy_swissroll --out swissroll.gif      # points dissolving into N(0, I)
    python visualize.py reverse --run runs/shapes_ldm_kl --out reverse.png        # x_t and x̂0 over t
    python visualize.py reverse --run runs/toy_swissroll --out swissroll.png      # point clouds over t
    python visualize.py interpolate --run runs/shapes_ldm_kl --out interp.png     # DDIM-inverted slerp strips
    python visualize.py attributes --run runs/shapes_ldm_kl --attr-grid color --out colors.png
"""

import argparse
from pathlib import Path

import torch

from latentdiff.cli import check_output_path, condition_rows, parse_attrs, user_errors
from latentdiff.pipeline import LatentDiffusion
from latentdiff.runtime import flush_denormals
from latentdiff.viz import (
    forward_process_frames,
    image_grid,
    reverse_process_grid,
    reverse_process_scatter,
    save_gif,
    save_png,
    scatter_image,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="picture", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run", required=True, help="a train_diffusion.py run folder, or an export.py folder")
    common.add_argument("--out", required=True, help="output .png (.gif for forward)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--steps", type=int, default=None,
                        help="reverse-process steps, 1 to the run's T (default: the run's sample.steps, as "
                             "sample.py; all T when none)")
    common.add_argument("--checkpoint", choices=["best", "last"], default="last")
    f = sub.add_parser("forward", parents=[common], help="the forward process as a GIF")
    f.add_argument("--frames", type=int, default=20)
    f.add_argument("--num", type=int, default=8, help="images (or 2000 points for a 2-D run)")
    r = sub.add_parser("reverse", parents=[common], help="x_t and the x̂0 predictions over t")
    r.add_argument("--num", type=int, default=4, help="samples (or 2000 points for a 2-D run)")
    r.add_argument("--columns", type=int, default=12, help="timesteps shown")
    i = sub.add_parser("interpolate", parents=[common], help="strips between pairs of test images")
    i.add_argument("--pairs", type=int, default=3)
    i.add_argument("--n", type=int, default=8, help="images per strip")
    a = sub.add_parser("attributes", parents=[common], help="one row per value of an attribute")
    a.add_argument("--attr-grid", "--grid-by", dest="grid_by", required=True, metavar="NAME",
                   help="the attribute that takes each of its values, one row per value")
    a.add_argument("--attr", action="append", default=[], metavar="NAME=VALUE")
    a.add_argument("--per-row", type=int, default=8)
    a.add_argument("--guidance", type=float, default=None, help="default: the run's sample.guidance_scale")
    return p.parse_args(argv)


def test_examples(ldm: LatentDiffusion, n: int) -> torch.Tensor:
    """The first n test images (or points) of the run's dataset."""
    from latentdiff.builders import build_data
    from latentdiff.config import DataConfig, from_dict

    test_set = build_data(from_dict(DataConfig, ldm.config["data"]), "test")
    return torch.stack([test_set[i][0] for i in range(min(n, len(test_set)))])


def main(argv=None):
    args = parse_args(argv)
    with user_errors():
        out = Path(args.out)
        if args.picture == "forward" and out.suffix.lower() != ".gif":
            raise ValueError(f"--out {out}: the forward process is an animation; name it .gif")
        check_output_path("--out", out, (".gif",) if args.picture == "forward" else None)  # before any work
        flush_denormals()
        ldm = LatentDiffusion.from_run(args.run, checkpoint=args.checkpoint)
        # The run's sampler settings (LatentDiffusion.sampling_settings), as sample.py uses them; --steps above
        # the run's T, or --guidance on an unconditional run, is refused there in one line.
        resolved = ldm.sampling_settings(steps=args.steps, guidance_scale=getattr(args, "guidance", None))
        args.steps = resolved["steps"] or ldm.diffusion.num_timesteps
        points = ldm.autoencoder is None and len(ldm.latent_shape) == 1
        g = torch.Generator().manual_seed(args.seed)
        if args.picture == "forward":
            x0 = ldm.encode(test_examples(ldm, 2000 if points else args.num))
            if points:  # a fixed view of ±4 in normalised units, so the spread of N(0, I) is visible
                frames = forward_process_frames(ldm.diffusion, x0, lambda x: scatter_image(x, extent=4.0),
                                                args.frames, g)
            else:
                frames = forward_process_frames(ldm.diffusion, x0,
                                                lambda x: image_grid(ldm.decode(x), nrow=len(x0)), args.frames, g)
            save_gif(frames, out)
        elif args.picture == "reverse":
            k = max(1, args.steps // args.columns)
            _, trajectory = ldm.sample_latents(2000 if points else args.num, steps=args.steps, generator=g,
                                               return_trajectory=True, trajectory_every=k)
            if points:  # the test points in blue beneath each panel show where the cloud should end up
                picture = reverse_process_scatter(trajectory, ldm.encode(test_examples(ldm, 2000)), args.columns)
            else:
                picture = reverse_process_grid(trajectory, ldm.decode, args.columns)
            save_png(picture, out)
        elif args.picture == "interpolate":
            if points:
                raise ValueError("interpolate: this run models 2-D points, not images; use an image run")
            images = test_examples(ldm, 2 * args.pairs)
            strips = [ldm.interpolate(images[2 * p], images[2 * p + 1], n=args.n, steps=args.steps)
                      for p in range(len(images) // 2)]
            save_png(image_grid(torch.cat(strips), nrow=args.n), out)
        else:  # attributes
            names = ldm.schema.names if ldm.schema is not None else []
            values = ldm.schema.num_values(names.index(args.grid_by)) if args.grid_by in names else 1
            cond, _ = condition_rows(ldm, args.per_row * values, parse_attrs(args.attr), args.grid_by)
            images = ldm.sample(len(cond), attrs=cond, guidance_scale=args.guidance, steps=args.steps, generator=g)
            save_png(image_grid(images, nrow=args.per_row), out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
