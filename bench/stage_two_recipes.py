#!/usr/bin/env python
"""Which stage-two settings learn fastest per CPU-second? Recipe variants at one budget, on one autoencoder.

    OMP_NUM_THREADS=1 python bench/stage_two_recipes.py --variants simple min_snr v_min_snr channel_norm_simple \\
        --samplers ddim:50:0 ddim:50:1 dpm_solver++:10                  # Fashion-MNIST VAE, 20-minute point
    python bench/stage_two_recipes.py --model cond --variants recipe drop_all_0.3 --tag dropout
    python bench/stage_two_recipes.py --variant mine diffusion.prediction=v train.lr=5e-4
    python bench/stage_two_recipes.py --model cond --equal-cpu --variant wide denoiser.channels=64 --tag shape
    python bench/stage_two_recipes.py --quick                             # shapes, tiny: a smoke test

The question of the budget curve's item 2 (bench/budget_curve.py): with the autoencoder and the CPU budget of
one of its points held fixed, which stage-two recipe gives the best samples? Each variant is the dataset's
stage-two recipe (configs/<dataset>/ldm_<kl|rae>.yaml) plus a few overrides (``CANDIDATES``, or ``--variant NAME
KEY=VALUE ...``), trained through train_diffusion.py on the point's own autoencoder
(<budget curve folder>/<budget>min/<kind>_ae) for the steps that point gave its stage two (from the budget
curve's calibration.json: every candidate here costs the same per step, and the JSON records each run's CPU time
so a costlier one shows; with ``--equal-cpu`` a variant with overrides trains instead for the steps that cost what
the recipe's steps cost, both measured here by short runs: for the denoiser's shape). Every variant is then scored
by the library's evaluation (the budget curve's judge, FD / precision / recall on ``--num`` samples against
held-out test images) under each sampler setting of ``--samplers`` ("recipe": the run's own; "ddim:50",
"ddim:50:1" for η = 1, "dpm_solver++:10", a guidance scale after η: "dpm_solver++:10:-:3", and after it the noise
levels where guidance acts: "dpm_solver++:10:-:3:0-0.6"), once per seed
(mean, standard deviation, min, max). The scored sets are the unconditional samples (``--model uncond``: a model
trained without attributes), or, with ``--model cond``, the class-conditional model's unconditional branch, its
class-conditional samples with guidance and its samples with classes drawn from the data. The ex-post GMM on the
same autoencoder and its reconstructions are scored beside them (with the first variant) as the references.

Resumable as the budget curve is: a trained variant and a written evaluation are not redone. Writes
bench/results/stage_two_recipes_<dataset>_<kind>_<budget>min_<model>[_<tag>].json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import budget_curve as bc  # noqa: E402
from common import ROOT, write_results  # noqa: E402

sys.path.insert(0, str(ROOT))
from latentdiff.diffusion import check_guidance_interval  # noqa: E402

# Named variants: overrides on top of the recipe, each naming every key it is about (so a variant means the same
# run whatever the recipe's own choice); each costs what the recipe costs per step.
CANDIDATES = {
    "recipe": [],
    # (the ε variants name the prediction since the recipes predict v: "simple" meant ε when the recipes did)
    "simple": ["diffusion.prediction=eps", "diffusion.loss_weighting=simple"],  # L_simple, Ho et al. 2020 Eq. 14
    "min_snr": ["diffusion.prediction=eps", "diffusion.loss_weighting=min_snr"],  # ε, Min-SNR-5 (Hang et al. 2023)
    "v_min_snr": ["diffusion.prediction=v", "diffusion.loss_weighting=min_snr"],
    "v_cosine": ["diffusion.prediction=v", "diffusion.beta_schedule=cosine"],  # Nichol & Dhariwal 2021 (not with ε:
    # its ᾱ_T ≈ 2e-9 magnifies the ε error at t = T in x̂0, see latentdiff.config)
    "channel_norm_simple": ["latents.normalisation=channel", "diffusion.prediction=eps",
                            "diffusion.loss_weighting=simple"],  # per-channel
    # mean / std instead of one global scale
    "lr_2e-3": ["train.lr=2e-3"],
    "drop_all_0.3": ["conditioning.drop_all_prob=0.3"],  # the unconditional branch's share, conditional model
    # Karras et al. 2024's power-function EMA: σ_rel 0.05 (their usual) and 0.2 (longer) against the recipe's
    # warm-up EMA, which is a power-function EMA with σ_rel ≈ 0.09 for any run under ~9000 steps (optim.EMA)
    "ema_sigma_rel_0.05": ["train.ema_sigma_rel=0.05"],
    "ema_sigma_rel_0.2": ["train.ema_sigma_rel=0.2"],
    # the denoiser's shape (costs more per step: give --equal-cpu so each trains for what the recipe's steps cost)
    "wide_64": ["denoiser.channels=64"],
    "deep_2": ["denoiser.num_res_blocks=2"],
}
SETS = {"uncond": {"ldm": "unconditional"},
        "cond": {"ldm": "no class asked", "ldm_conditional": "class asked + CFG",
                 "ldm_drawn_attributes": "class drawn from the data + CFG"}}
REFERENCES = {"gmm": "ex-post GMM, same autoencoder", "reconstructions": "reconstructions (floor)"}


def parse_sampler(text: str) -> dict:
    """ "recipe" -> {} (the run's own); "ddim:50" -> {"sampler": "ddim", "steps": 50}; "ddim:50:1" adds
    "eta": 1.0, "ddim:50:0:3" "guidance_scale": 3.0 as well, and "ddim:50:0:3:0.1-0.7" "guidance_interval":
    [0.1, 0.7] (guidance only where 0.1 <= t/T <= 0.7, Kynkäänniemi et al. 2024); "-" keeps the run's own value
    ("dpm_solver++:10:-:3")."""
    if text == "recipe":
        return {}
    parts = text.split(":")
    try:
        if not 2 <= len(parts) <= 5:
            raise ValueError
        out = {"sampler": parts[0], "steps": int(parts[1])}
        for key, value in zip(("eta", "guidance_scale"), parts[2:4]):
            if value != "-":
                out[key] = float(value)
        if len(parts) == 5 and parts[4] != "-":
            lo, hi = parts[4].split("-")
            out["guidance_interval"] = list(check_guidance_interval((lo, hi)))  # ValueError when not 0 <= lo < hi <= 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give recipe or SAMPLER:STEPS[:ETA[:GUIDANCE[:LO-HI]]] (e.g. "
                                         f"ddim:50:1, dpm_solver++:10:-:3, dpm_solver++:10:-:3:0.1-0.7)") from None
    if out["sampler"] not in ("ddpm", "ddim", "dpm_solver++") or out["steps"] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the sampler is one of ddpm, ddim, dpm_solver++ and the steps "
                                         f"at least 1")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--kind", choices=list(bc.KINDS), default="vae")
    p.add_argument("--budget", type=float, default=20.0, help="the budget curve point (CPU minutes, both stages)")
    p.add_argument("--ae-share", type=float, default=0.3, help="as given to the budget curve")
    p.add_argument("--model", choices=list(SETS), default="uncond", help="the stage-two model the variants change")
    p.add_argument("--variants", nargs="+", default=["recipe"], help=f"named variants: {', '.join(CANDIDATES)}")
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="a variant of your own: its name and recipe overrides (repeatable)")
    p.add_argument("--samplers", nargs="+", type=parse_sampler, default=[{}],
                   help="recipe (the run's own) or SAMPLER:STEPS[:ETA[:GUIDANCE[:LO-HI]]], '-' for the run's own "
                        "value")
    p.add_argument("--steps", type=int, default=None, help="stage-two steps (default: the budget point's)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="sampling seeds (default 0 1 2)")
    p.add_argument("--num", type=int, default=1000, help="samples per set, and held-out reference images")
    p.add_argument("--curve-dir", type=Path, default=None,
                   help="the budget curve's folder (default runs/bench/budget_curve_<dataset>): its calibration, "
                        "the point's autoencoder and the judge")
    p.add_argument("--out-dir", type=Path, default=None, help="run folders (default runs/bench/stage_two_recipes_"
                                                               "<dataset>_<kind>_<budget>min_<model>)")
    p.add_argument("--equal-cpu", action="store_true",
                   help="for variants that change the cost per step (the denoiser's shape): train each variant with "
                        "overrides for the steps that cost what the recipe's steps cost, both calibrated here by "
                        "short runs of --calib-steps steps (else every variant trains the point's steps)")
    p.add_argument("--calib-steps", nargs=2, type=int, default=None, metavar=("FEW", "MORE"),
                   help="steps of the two calibration runs per variant (default 20 120; --quick 4 12)")
    p.add_argument("--tag", default=None, help="appended to the results' name (one question per JSON; the runs of "
                                                "every question share --out-dir)")
    p.add_argument("--quick", action="store_true", help="smoke test: shapes, a tiny autoencoder trained here, "
                                                         "8 steps per variant, 16 samples, seeds 0 1")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in CANDIDATES]
    if unknown:
        p.error(f"--variants {' '.join(unknown)}: not a named variant ({', '.join(CANDIDATES)}); give your own "
                f"with --variant NAME KEY=VALUE ...")
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.tag):
        p.error(f"--tag {args.tag!r}: letters, digits, '_', '.' and '-' only (it names a file)")
    args.overrides = {v: CANDIDATES[v] for v in args.variants}
    for name, *overrides in args.variant:
        if name in args.overrides or any("=" not in o for o in overrides):
            p.error(f"--variant {name} {' '.join(overrides)}: give a new name, then KEY=VALUE overrides")
        args.overrides[name] = overrides
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    args.calib_steps = args.calib_steps or ([4, 12] if args.quick else [20, 120])
    if not 1 <= args.calib_steps[0] < args.calib_steps[1]:
        p.error(f"--calib-steps {' '.join(map(str, args.calib_steps))}: give two step counts, 1 <= FEW < MORE")
    # what budget_curve.evaluate reads
    args.sample_steps, args.classifier_steps, args.gmm_components, args.gmm_fit_examples = None, None, 10, 10000
    args.bound_examples, args.bound_timesteps = 16, 4
    extra = []
    if args.quick:
        args.dataset, args.num, args.steps = "shapes", 16, args.steps or 8
        args.classifier_steps, args.gmm_components, args.gmm_fit_examples = 5, 2, 128
        args.bound_examples, args.bound_timesteps = 4, 2
        extra = bc.QUICK_LDM
    args.extra = extra
    tag = f"{args.dataset}_{args.kind}_{args.budget:g}min_{args.model}{'_quick' if args.quick else ''}"
    args.name = f"stage_two_recipes_{tag}"
    args.out_dir = (args.out_dir or ROOT / "runs" / "bench" / args.name).resolve()
    args.name += f"_{args.tag}" if args.tag else ""
    args.curve_dir = (args.curve_dir or ROOT / "runs" / "bench" / f"budget_curve_{args.dataset}"
                      f"{'_quick' if args.quick else ''}").resolve()
    args.classifier_dir = args.curve_dir / "classifiers"  # the budget curve's judge: FDs comparable with its own
    return args


def point_of_curve(args) -> tuple[Path, int]:
    """The budget point's autoencoder run and its stage-two steps (or one error line saying how to make them)."""
    if args.quick:  # a tiny autoencoder of our own
        ae = args.out_dir / "ae"
        recipe = ROOT / "configs" / args.dataset / f"{bc.KINDS[args.kind][0]}.yaml"
        bc.train("train_ae.py", recipe, ae, 8, bc.QUICK_AE, cap_minutes=30)
        return ae, args.steps
    ae = args.curve_dir / f"{args.budget:g}min" / f"{args.kind}_ae"
    if not (ae / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(f"{ae} holds no trained autoencoder: run python bench/budget_curve.py --dataset "
                                f"{args.dataset} --kinds {args.kind} --budgets {args.budget:g} first (or give "
                                f"--curve-dir)")
    if args.steps:
        return ae, args.steps
    calibration = json.loads((args.curve_dir / "calibration.json").read_text())["stages"][args.kind]
    return ae, bc.steps_for(60 * args.budget * (1 - args.ae_share), calibration[args.model])


def equal_cpu_steps(steps: int, reference: dict, variant: dict) -> int:
    """The steps of a variant whose whole run costs what ``steps`` steps of the reference cost: both calibrations
    ({"per_step_s", "fixed_s"}, budget_curve.fit_calibration) measured in the same sweep, so the ratio holds on a
    machine of any speed."""
    return bc.steps_for(reference["fixed_s"] + steps * reference["per_step_s"], variant)


def calibrate(args, recipe: Path, name: str, overrides: list[str]) -> dict:
    """A variant's CPU cost: runs of --calib-steps steps under <out-dir>/calibration, fitted as the budget curve
    fits its stages (a fixed part and a part per step)."""
    points = []
    for n in args.calib_steps:
        r = bc.train("train_diffusion.py", recipe, args.out_dir / "calibration" / f"{name}_{n}", n, overrides,
                     cap_minutes=30)
        points.append((n, r["cpu_s"]))
    fit = bc.fit_calibration(points)
    print(f"calibration {name}: {fit['per_step_s']:.3f} s/step + {fit['fixed_s']:.1f} s", flush=True)
    return fit


def beyond_own(run: Path, sampling: dict) -> dict:
    """``sampling`` ({} when it asks only for the run's own settings): so the same settings share one evaluation
    file (eval_seed<K>.json) whether asked as "recipe" or spelt out, for a variant trained after the recipe's
    sampling changed as for one trained before it."""
    own = bc.sampling_of(run / "config.yaml")
    return {} if all(own.get(k) == v for k, v in sampling.items()) else sampling


def main(argv=None):
    args = parse_args(argv)
    import torch

    from latentdiff.cli import user_errors
    from latentdiff.runtime import flush_denormals

    torch.set_num_threads(1)
    flush_denormals()
    recipe = ROOT / "configs" / args.dataset / f"{bc.KINDS[args.kind][1]}.yaml"
    rows, runs = [], {}
    with user_errors():
        ae, steps = point_of_curve(args)
        base = [f"ae.run={ae}", *bc.MODELS[args.model], *args.extra]
        # --equal-cpu: each variant with overrides costs what the recipe costs (the denoiser's shape changes the cost)
        reference = calibrate(args, recipe, "reference", base) if args.equal_cpu else None
        fits = {n: calibrate(args, recipe, n, [*base, *o]) for n, o in args.overrides.items() if reference and o}
        variant_steps = {n: equal_cpu_steps(steps, reference, fits[n]) if n in fits else steps for n in args.overrides}
        for name, overrides in args.overrides.items():
            runs[name] = bc.train("train_diffusion.py", recipe, args.out_dir / name, variant_steps[name],
                                  [*base, *overrides], cap_minutes=max(30.0, variant_steps[name] * 0.02))
        first = next(iter(args.overrides))
        for name in args.overrides:
            for sampling in args.samplers:
                with_refs = name == first and sampling == args.samplers[0]
                asked = beyond_own(args.out_dir / name, sampling)  # reads the run's config once, not once per seed
                evals = [bc.evaluate(args, args.out_dir / name, seed, gmm=with_refs, sampling=asked)
                         for seed in args.seeds]
                used = {k: evals[0]["settings"].get(k) for k in ("sampler", "steps", "eta", "guidance_scale",
                                                                  "guidance_interval")}
                sets = {**SETS[args.model], **(REFERENCES if with_refs else {})}
                for key, label in sets.items():
                    row = {"variant": key, "set": label}  # a reference: no stage two, no sampler
                    if key not in REFERENCES:
                        row = {"variant": name, "set": label, "overrides": " ".join(args.overrides[name]),
                               "sampling": f"{used['sampler']}:{used['steps']} η={used['eta']:g}"
                                           + (f" w={used['guidance_scale']:g}" if args.model == "cond" else "")
                                           + (" in [{:g}, {:g}]".format(*used["guidance_interval"])
                                              if args.model == "cond" and used["guidance_interval"] else ""),
                               "train_steps": runs[name]["steps_trained"], "cpu_min": runs[name]["cpu_s"] / 60, **used}
                    rows.append(row | bc.seed_columns([e["samples"].get(key, {}) for e in evals],
                                                      class_accuracy=key == "ldm_conditional"))
    columns = ["variant", "set", "overrides", "sampling", "train_steps", "cpu_min", "fd", "fd_std", "precision",
               "recall", "class_accuracy"]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_results(args.name, rows, columns, extra={
        "settings": settings, "threads": 1, "autoencoder": str(ae), "stage_two_steps": steps,
        "calibration": {"reference": reference, **fits} if reference else None,
        "runs": {n: {k: v for k, v in r.items() if k != "command"} | {"command": r["command"][1:]}
                 for n, r in runs.items()}})


if __name__ == "__main__":
    main()
