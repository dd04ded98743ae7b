#!/usr/bin/env python
"""Sample quality against sampling steps: Fréchet distance (judge features) and time per image.

    python bench/quality_vs_steps.py --run runs/fashion_mnist_ldm_kl          # DDIM 10/20/50/100, η=1, DDPM 1000,
                                                                              # DPM-Solver++ 5/10/20
    python bench/quality_vs_steps.py --run runs/fashion_mnist_ldm_kl --settings ddpm:1000 --num 1000 --seed 1
    python bench/quality_vs_steps.py --run runs/fashion_mnist_ldm_kl --num 200 --quick

Unconditional samples of a stage-two run, scored exactly as ``evaluate.py`` scores them (same
reference: the first --num test images; same judge, cached in <run's parent>/classifiers), so the
rows are comparable with its tables. Time includes decoding; one thread. Writes
bench/results/quality_vs_steps_<run>[_<settings>][_seed<K>].json (see ``result_name``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402

DEFAULT_SETTINGS = ["ddim:10", "ddim:20", "ddim:50", "ddim:100", "ddim:50:1", "ddpm:1000", "dpm_solver++:5",
                    "dpm_solver++:10", "dpm_solver++:20"]


def _tag(setting: str) -> str:
    """"ddpm:1000" → "ddpm1000", "ddim:50:1" → "ddim50eta1", "dpm_solver++:10" → "dpmsolverpp10" (file names)."""
    sampler, steps, *eta = setting.split(":")
    return f"{sampler.replace('_', '').replace('+', 'p')}{steps}" + (f"eta{eta[0]}".replace(".", "p") if eta else "")


def result_name(run: str, settings: list[str], seed: int | None) -> str:
    """quality_vs_steps_<run>[_<settings>][_seed<K>]: settings other than the default sweep and an explicit
    seed each name the file, so a run with other settings or seeds never writes over another one's results."""
    name = f"quality_vs_steps_{Path(run).name}"
    if list(settings) != DEFAULT_SETTINGS:
        name += "_" + "_".join(_tag(s) for s in settings)
    if seed is not None:
        name += f"_seed{seed}"
    return name


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                   help="SAMPLER:STEPS[:ETA], SAMPLER one of ddpm, ddim, dpm_solver++ (ETA: ddim only)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default 0); given, it names the file")
    p.add_argument("--quick", action="store_true", help="DDIM 5 and 10, DPM-Solver++ 5 only")
    p.add_argument("--timestep-spacing", default=None, choices=["linspace", "leading", "trailing", "logsnr"],
                   help="default: linspace for every sampler (GaussianDiffusion.sample); given, it names the file")
    p.add_argument("--unasked", default=None, choices=["model", "data"],
                   help="conditional runs: nothing is asked, so 'data' draws every attribute from the training data "
                        "and guides towards it with the run's guidance_scale, 'model' samples the unconditional "
                        "model (default: the run's sample.unasked); given, it names the file")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="with --unasked data: guide only where LO <= t/T <= HI (default: the run's "
                        "sample.guidance_interval); given, it names the file")
    args = p.parse_args()
    if args.quick:
        args.settings = ["ddim:5", "ddim:10", "dpm_solver++:5"]
    for setting in args.settings:  # before loading anything
        parts = setting.split(":")
        if (len(parts) not in (2, 3) or parts[0] not in ("ddpm", "ddim", "dpm_solver++") or not parts[1].isdigit()
                or (len(parts) == 3 and parts[0] != "ddim")):
            p.error(f"--settings {setting!r}: write SAMPLER:STEPS[:ETA] with SAMPLER ddpm, ddim or dpm_solver++ "
                    f"(ETA for ddim only), e.g. dpm_solver++:10")
    sys.path.insert(0, str(ROOT))
    from latentdiff.diffusion import check_guidance_interval

    try:
        if args.guidance_interval is not None:
            check_guidance_interval(args.guidance_interval)
    except ValueError:
        p.error(f"--guidance-interval {args.guidance_interval[0]:g} {args.guidance_interval[1]:g}: give LO HI with "
                f"0 <= LO < HI <= 1 (fractions of T)")
    import torch

    from latentdiff.builders import build_data
    from latentdiff.config import DataConfig, from_dict
    from latentdiff.evaluation import Scorer, stacked
    from latentdiff.metrics.classifier import load_or_train_classifier
    from latentdiff.pipeline import LatentDiffusion
    from latentdiff.runtime import flush_denormals

    torch.set_num_threads(1)
    flush_denormals()
    ldm = LatentDiffusion.from_run(args.run)
    test_set = build_data(from_dict(DataConfig, ldm.config["data"]), "test")
    judge, record, _ = load_or_train_classifier(ldm.config["data"], Path(args.run).resolve().parent / "classifiers")
    reference, _ = stacked(test_set, 0, args.num)
    score = Scorer(reference, judge, test_set.schema)
    rows = []
    for setting in args.settings:
        sampler, steps, *eta = setting.split(":")
        g = torch.Generator().manual_seed(args.seed or 0)
        noise = torch.randn(args.num, *ldm.latent_shape, generator=g)
        start = time.perf_counter()
        images = ldm.sample(args.num, sampler=sampler, steps=int(steps), eta=float(eta[0]) if eta else 0.0,
                            generator=g, noise=noise, batch_size=250, timestep_spacing=args.timestep_spacing,
                            unasked=args.unasked, guidance_interval=args.guidance_interval)
        seconds = time.perf_counter() - start
        m = score(images)
        rows.append({"sampler": sampler, "steps": int(steps), "eta": float(eta[0]) if eta else 0.0,
                     "fd": m["fd"], "precision": m["precision"], "recall": m["recall"],
                     "ms_per_image": 1000 * seconds / args.num})
        print(rows[-1], flush=True)
    name = result_name(args.run, args.settings, args.seed) + (f"_{args.timestep_spacing}" if args.timestep_spacing
                                                               else "") + (f"_unasked{args.unasked}" if args.unasked
                                                                           else "")
    if args.guidance_interval is not None:
        name += "_interval{:g}to{:g}".format(*args.guidance_interval)
    settings = ldm.sampling_settings(guidance_interval=args.guidance_interval, unasked=args.unasked)
    write_results(name, rows, list(rows[0]),
                  extra={"run": args.run, "num": args.num, "seed": args.seed or 0, "settings": args.settings,
                         "timestep_spacing": args.timestep_spacing, "unasked": settings["unasked"],
                         "guidance_scale": settings["guidance_scale"] if settings["unasked"] == "data" else None,
                         "guidance_interval": settings["guidance_interval"] if settings["unasked"] == "data" else None,
                         "reference": f"first {args.num} test images",
                         "judge_test_accuracy": record["test_accuracy"], "threads": 1})


if __name__ == "__main__":
    main()
