#!/usr/bin/env python
"""Latent inpainting (RePaint, ``LatentDiffusion.inpaint``): fidelity of the kept pixels and coherence of the fill.

    python bench/inpainting.py --run runs/shapes_ldm_kl                          # mask the right half
    python bench/inpainting.py --run runs/fashion_mnist_ldm_kl --mask-half lower
    python bench/inpainting.py --run runs/shapes_ldm_kl --sampler ddpm --steps 100 --resample 1 5

Held-out test images (the first --num) lose one half (``--mask-half right|lower``: that half is filled). For every
``--resample`` R and every request, a row:

    psnr kept        PSNR (dB, images in [-1, 1]) over the kept pixels of the decoded result BEFORE paste-back
                     (with paste-back they are exact): how well the fill respects what was kept, next to
    psnr kept recon  the autoencoder's own reconstruction decode(encode(x)) over the same pixels, its ceiling;
    judge <a>        how often the judge (the pixel CNN ``evaluate.py`` trains on the dataset's labels,
                     ``latentdiff.metrics.classifier``, cached in <run's parent>/classifiers) finds attribute a of
                     the pasted-back result equal to the target: the image's own value, or the asked one;
    joint            all attributes at once;
    one shape        (shapes only) the pasted-back result holds exactly one connected shape (8-connected foreground,
                     some channel above half intensity, specks under --min-pixels ignored), as every data image does;
    coherent         (shapes only) one shape AND all its attributes as the target: "one connected shape of the
                     original attributes" (or of the asked ones).

Requests: "own" (a conditional run asks for the image's own attributes; an unconditional run asks nothing) and,
on conditional runs, "other <attr>" (``--other-attr``, default the first attribute, shifted to another value; the
others stay the image's own). Sampler, steps, eta and guidance default to the run's ``sample:`` settings.
Writes bench/results/inpainting_<run>[_<half>].json (LATENTDIFF_BENCH_RESULTS moves the folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402


def masked_psnr(a, b, mask) -> float:
    """Mean over images of 10 log10(2² / MSE over the pixels where mask is 1); a, b (N, C, H, W), mask (1, 1, H, W)."""
    import torch

    keep = mask.expand_as(a)
    mse = ((a - b) ** 2 * keep).flatten(1).sum(1) / keep.flatten(1).sum(1)
    return float((10 * torch.log10(4.0 / mse)).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--mask-half", choices=["right", "lower"], default="right", help="the half that is filled")
    p.add_argument("--num", type=int, default=192, help="held-out images")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm_solver++"], default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--resample", type=int, nargs="+", default=[1])
    p.add_argument("--other-attr", default=None, help="the attribute asked to differ (default: the first)")
    p.add_argument("--min-pixels", type=int, default=2, help="shapes: smaller foreground specks are not a shape")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--quick", action="store_true", help="8 images, 3 steps: a smoke test, not a measurement")
    args = p.parse_args()
    if args.quick:
        args.num, args.steps = 8, 3

    import torch

    from latentdiff.builders import build_data
    from latentdiff.config import DataConfig, from_dict
    from latentdiff.metrics.classifier import load_or_train_classifier
    from latentdiff.metrics.image import count_components
    from latentdiff.pipeline import LatentDiffusion, half_mask
    from latentdiff.runtime import flush_denormals

    torch.set_num_threads(1)
    flush_denormals()
    ldm = LatentDiffusion.from_run(args.run)
    settings = ldm.sampling_settings(args.sampler, args.steps, args.eta, args.guidance)
    test = build_data(from_dict(DataConfig, ldm.config["data"]), "test")
    images, true = (torch.stack(c) for c in zip(*(test[i] for i in range(min(args.num, len(test))))))
    schema = ldm.schema
    names = schema.names if schema is not None else []
    judge, record, _ = load_or_train_classifier(ldm.config["data"], Path(args.run).resolve().parent / "classifiers")
    H, W = images.shape[-2:]
    shapes = ldm.config["data"].get("name") == "shapes"
    mask = half_mask(H, W, args.mask_half)
    recon = torch.cat([ldm.decode(ldm.encode(chunk)) for chunk in images.split(args.batch_size)])
    psnr_recon = masked_psnr(recon, images, mask)

    requests = [("own", true if ldm.conditional else None, true)]
    if ldm.conditional and names:
        a = schema.names.index(args.other_attr) if args.other_attr else 0
        k = schema.num_values(a)
        asked = true.clone()
        shift = torch.randint(1, k, (len(true),), generator=torch.Generator().manual_seed(args.seed))
        asked[:, a] = (true[:, a] + shift) % k  # always another value than the image's own
        requests.append((f"other {schema.names[a]}", asked, asked))
    rows = []
    for resample in args.resample:
        for name, attrs, target in requests:
            generator = torch.Generator().manual_seed(args.seed)
            raw = []
            for start in range(0, len(images), args.batch_size):
                part = slice(start, start + args.batch_size)
                raw.append(ldm.inpaint(images[part], mask, attrs=None if attrs is None else attrs[part],
                                       guidance_scale=settings["guidance_scale"], sampler=settings["sampler"],
                                       steps=settings["steps"], eta=settings["eta"], resample=resample,
                                       paste_back=False, generator=generator))
            raw = torch.cat(raw)
            pasted = torch.where(mask.bool(), images, raw)
            predicted = judge.judge(pasted)[1]
            agree = predicted == target
            rows.append({"request": name, "resample": resample, "n": len(images),
                         "psnr kept": masked_psnr(raw, images, mask), "psnr kept recon": psnr_recon,
                         "joint": float(agree.all(1).double().mean()),
                         **{f"judge {n}": float(agree[:, b].double().mean()) for b, n in enumerate(names)}})
            if shapes:
                one = count_components(pasted.amax(1) > 0, args.min_pixels) == 1
                rows[-1].update({"one shape": float(one.double().mean()),
                                 "coherent": float((one & agree.all(1)).double().mean())})
            print(rows[-1], flush=True)
    columns = ["request", "resample", "n", "psnr kept", "psnr kept recon", "joint",
               *[f"judge {n}" for n in names], *(["one shape", "coherent"] if shapes else [])]
    suffix = "" if args.mask_half == "right" else f"_{args.mask_half}"
    write_results(f"inpainting_{Path(args.run).name}{suffix}", rows, columns,
                  extra={"run": args.run, "mask_half": args.mask_half, **settings,
                         "judge_test_accuracy": record["test_accuracy"], "quick": args.quick})


if __name__ == "__main__":
    main()
