#!/usr/bin/env python
"""Autoguidance (Karras et al. 2024) for the unconditional stage two, at a budget curve point.

    python bench/autoguidance.py --kinds vae --budget 20                 # Fashion-MNIST VAE, the 20-minute point
    python bench/autoguidance.py --kinds rae --budget 20 --guide-at 0.25 --scales 1 1.25 1.5 2 --seeds 0 1 2
    python bench/autoguidance.py --kinds vae --budget 20 --model cond    # class-conditional: CFG and autoguidance
    python bench/autoguidance.py --quick                                 # shapes, tiny fixed steps: a smoke test

The question (#26): does guiding the dedicated unconditional model with a weaker version of itself close its gap
to the autoencoder's reconstructions (the floor any prior can reach)? The guide here costs no training: it is the
run's own EMA weights at ``--guide-at`` of its steps (``train.guide_at``), kept while it trains.

What runs: the autoencoder and the unconditional (``--model cond``: the class-conditional) stage two of the
budget curve's point (the recipes of
configs/<dataset>/, the step counts the committed bench/results/budget_curve_<dataset>.json records for that kind
and budget, the same schedule overrides and seeds: ``budget_curve.train``), with ``train.guide_at`` added. Each
``--scales`` value w_a is scored with the library's evaluation (FD on the project judge's features, precision and
recall, ``--num`` samples against ``--num`` held-out test images, at the recipe's sampler) once per ``--seeds``;
w_a = 1 is the unguided model, which should reproduce the curve's own ``dedicated_uncond`` (``cond_model_cfg``)
figure (the guide's snapshot does not touch training). With ``--model cond`` the scored set is the classes of the
reference images asked for with the recipe's classifier-free guidance (scale and interval), autoguidance added on
top, and the judge's class accuracy is recorded. The reconstructions' FD is the floor. Resumable as the curve is.
Writes bench/results/autoguidance_<dataset>_<budget>min_<kind>[_cond]_guide<guide-at>.json (``--quick``:
autoguidance_shapes_quick[_cond].json).

The budget curve's autoguided rows: the row at ``CURVE_SCALES``' w_a (1.5 unconditional, 1.25 on top of CFG) also
goes into budget_curve_<dataset>.json, as ``dedicated_uncond_autoguided`` (``cond_model_cfg_autoguided``), and the
curve's plot is redrawn, when the guide is the recipe's (a snapshot at the recipe's ``train.guide_at``, the recipe's
CFG) and the curve has this point with these steps (``--quick``: budget_curve_shapes_quick.json's fixed-steps point).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import budget_curve as bc  # noqa: E402
from budget_curve import KINDS, add_autoguided, evaluate, seed_columns, train  # noqa: E402
from common import ROOT, provenance, results_path, write_results  # noqa: E402

# the stage-two models: (recipe overrides, the budget curve's row it reproduces at w_a = 1, the scored set)
MODELS = {"uncond": (["conditioning.enabled=false"], "dedicated_uncond", "ldm"),
          "cond": ([], "cond_model_cfg", "ldm_conditional")}
# The w_a of the rows this bench adds to the budget curve (its variants <curve row>_autoguided), one per model and the
# same at every budget: the lowest mean FD at the curve's 20-minute VAE point (autoguidance_fashion_mnist_20min_vae_
# guide0.25.json, _vae_cond_guide0.25.json; tests/test_records.py keeps them equal), not each point's own best.
CURVE_SCALES = {"uncond": 1.5, "cond": 1.25}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--kinds", nargs="+", default=["vae"], choices=sorted(KINDS))
    p.add_argument("--budget", type=float, default=20.0, help="the budget curve point (CPU minutes) to take steps from")
    p.add_argument("--guide-at", type=float, default=0.25, help="train.guide_at: the guide's fraction of the steps")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0], help="w_a values scored")
    p.add_argument("--model", choices=sorted(MODELS), default="uncond", help="the stage-two model guided")
    p.add_argument("--guide-channels", type=int, default=None, metavar="C",
                   help="guide with a separate, smaller stage two instead of the snapshot (Karras et al.'s recipe): "
                        "denoiser.channels=C trained for --guide-at of the steps on the same autoencoder; its "
                        "training CPU is added to the row's")
    p.add_argument("--guidance", type=float, default=None,
                   help="--model cond: classifier-free guidance scale (default: the recipe's); 1 scores autoguidance "
                        "in place of CFG")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where LO <= t/T <= HI (default: the recipe's, which an unconditional model does "
                        "not apply): the interval of every guidance, autoguidance included; unconditional, w_a = 1 "
                        "is scored without it (nothing to limit)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench" / "autoguidance")
    p.add_argument("--quick", action="store_true", help="shapes, 8 + 8 steps, 16 samples: a smoke test")
    args = p.parse_args(argv)
    if not 0 < args.guide_at < 1:
        p.error(f"--guide-at {args.guide_at}: give a fraction in (0, 1)")
    if args.guidance is not None and args.model != "cond":
        p.error("--guidance applies to --model cond (an unconditional model has no classifier-free guidance)")
    if args.guidance_interval is not None and not 0 <= args.guidance_interval[0] < args.guidance_interval[1] <= 1:
        p.error("--guidance-interval LO HI: give 0 <= LO < HI <= 1 (fractions of T)")
    if 1.0 not in args.scales:
        p.error("--scales must include 1 (the unguided model every other scale is compared with)")
    # what budget_curve.evaluate reads
    args.sample_steps, args.classifier_steps = None, None
    args.gmm_components, args.gmm_fit_examples, args.bound_examples, args.bound_timesteps = 10, 10000, 16, 4
    if args.quick:
        args.dataset, args.num, args.seeds, args.classifier_steps = "shapes", 16, [0], 5
        args.sample_steps = bc.QUICK_SAMPLE_STEPS  # as the quick curve's, whose fixed-steps point this one retrains
        args.bound_examples, args.bound_timesteps = 4, 2
    args.classifier_dir = args.out_dir / "classifiers"
    return args


def curve_steps(dataset: str, kind: str, budget: float, variant: str) -> tuple[int, int, dict]:
    """(autoencoder steps, stage-two steps, the curve's row) of the committed budget curve's point for ``variant``."""
    path = results_path(f"budget_curve_{dataset}")
    if not path.exists():
        raise SystemExit(f"error: {path} is missing; run bench/budget_curve.py first (or give --quick)")
    rows = [r for r in json.loads(path.read_text())["rows"]
            if r["kind"] == kind and r["budget_min"] == budget and r["variant"] == variant]
    if not rows:
        raise SystemExit(f"error: {path.name} has no {kind} point at {budget:g} CPU minutes")
    return rows[0]["ae_steps"], rows[0]["ldm_steps"], rows[0]


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": values}


def main(argv=None):
    args = parse_args(argv)
    rows, curve_rows = [], []
    overrides, variant, scored = MODELS[args.model]
    command = provenance()["command"]
    as_recipe = False  # whether any kind sampled as its recipe would: only those rows may go into the curve
    for kind in args.kinds:
        ae_recipe, ldm_recipe = (ROOT / "configs" / args.dataset / f"{name}.yaml" for name in KINDS[kind])
        if args.quick:
            ae_steps, ldm_steps, curve = 8, 8, None
            ae_extra, ldm_extra = bc.QUICK_AE, bc.QUICK_LDM
        else:
            ae_steps, ldm_steps, curve = curve_steps(args.dataset, kind, args.budget, variant)
            ae_extra, ldm_extra = [], []
        where = args.out_dir / (f"{args.budget:g}min" if not args.quick else "quick")
        ae = train("train_ae.py", ae_recipe, where / f"{kind}_ae", ae_steps, ae_extra, cap_minutes=120)
        ldm_run = where / f"{kind}_ldm_{args.model}_guide{args.guide_at:g}"
        ldm = train("train_diffusion.py", ldm_recipe, ldm_run, ldm_steps,
                    [f"ae.run={where / f'{kind}_ae'}", *overrides, f"train.guide_at={args.guide_at}", *ldm_extra],
                    cap_minutes=240)
        guide_run, guide_cpu_s = None, 0.0
        if args.guide_channels is not None:  # a smaller network, shorter trained: a run of its own
            guide_run = where / f"{kind}_ldm_{args.model}_small{args.guide_channels}_{args.guide_at:g}"
            guide_steps = max(1, round(args.guide_at * ldm_steps))
            guide_cpu_s = train("train_diffusion.py", ldm_recipe, guide_run, guide_steps,
                                [f"ae.run={where / f'{kind}_ae'}", *overrides,
                                 f"denoiser.channels={args.guide_channels}", *ldm_extra], cap_minutes=240)["cpu_s"]
        floor = None
        cpu_min = (ae["cpu_s"] + ldm["cpu_s"] + guide_cpu_s) / 60
        budget = None if args.quick else args.budget
        kind_as_recipe = recipe_guide(args, ldm_recipe)  # read once per kind, not once per scale
        as_recipe |= kind_as_recipe
        for w in args.scales:
            sampling = {"autoguidance_scale": w} | ({} if args.guidance is None else {"guidance_scale": args.guidance})
            if args.guidance_interval is not None and (w != 1 or args.model == "cond"):
                sampling["guidance_interval"] = list(args.guidance_interval)
            evals = [evaluate(args, ldm_run, seed, gmm=False, sampling=sampling, guide=guide_run)
                     for seed in args.seeds]
            sets = [e["samples"][scored] for e in evals]
            fd = stats([s["fd"] for s in sets])
            floor = evals[0]["samples"]["reconstructions"]["fd"]
            accuracy = [s["attribute_accuracy"]["joint"] for s in sets if "attribute_accuracy" in s]
            if w == CURVE_SCALES[args.model] and kind_as_recipe:
                curve_rows.append({"kind": kind, "budget_min": budget, "variant": f"{variant}_autoguided",
                                   "cpu_min": cpu_min, "ae_steps": ae_steps, "ldm_steps": ldm_steps}
                                  | seed_columns(sets, class_accuracy=args.model == "cond")
                                  | {"x_min": cpu_min if budget is None else budget, "w_a": w,
                                     "guide_at": args.guide_at, "record": f"{record_name(args)}.json",
                                     "command": command})
            rows.append({"kind": kind, "model": args.model, "budget_min": budget,
                         "guide_at": args.guide_at, "w_a": w, "fd": fd["mean"], "fd_std": fd["std"],
                         "fd_seeds": fd["seeds"], "precision": statistics.fmean(s["precision"] for s in sets),
                         "recall": statistics.fmean(s["recall"] for s in sets),
                         "class_accuracy": statistics.fmean(accuracy) if accuracy else None,
                         "guidance_scale": evals[0]["settings"]["guidance_scale"],
                         "guidance_interval": evals[0]["settings"]["guidance_interval"],
                         "reconstructions_fd": floor, "x_floor": fd["mean"] / floor,
                         "curve_fd": None if curve is None else curve["fd"],
                         "ae_steps": ae_steps, "ldm_steps": ldm_steps,
                         "guide": "snapshot" if guide_run is None else f"channels {args.guide_channels}",
                         "cpu_min": cpu_min,
                         "sampler": evals[0]["settings"]["sampler"],
                         "sample_steps": evals[0]["settings"]["steps"]})
        for row in (r for r in curve_rows if r["kind"] == kind):  # the same run unguided: the curve's own FD again
            row["unguided_fd"] = next(r["fd"] for r in rows if r["kind"] == kind and r["w_a"] == 1.0)
    write_results(record_name(args), rows, ["kind", "model", "guide_at", "w_a", "fd", "fd_std", "x_floor", "precision",
                                            "recall", "class_accuracy", "reconstructions_fd", "curve_fd", "cpu_min"],
                  extra={"out_dir": str(args.out_dir), "seeds": args.seeds, "num": args.num})
    curve = results_path(f"budget_curve_{args.dataset}" + ("_quick" if args.quick else ""))
    if curve_rows:
        for note in add_autoguided(curve, curve_rows):
            print(f"note: {note}", flush=True)
        print(f"wrote {len(curve_rows)} autoguided row(s) at w_a = {CURVE_SCALES[args.model]:g} into {curve}")
    elif as_recipe:
        print(f"note: --scales has no {CURVE_SCALES[args.model]:g}, the budget curve's w_a for --model {args.model}: "
              f"nothing added to {curve.name}", flush=True)


def record_name(args) -> str:
    """The bench's own record: bench/results/<this>.json, one per budget, kind, model, CFG and guide."""
    name = f"autoguidance_{args.dataset}_" + ("quick" if args.quick else f"{args.budget:g}min")
    if len(args.kinds) == 1 and not args.quick:  # one kind per process (two cores: two processes): one file each
        name += f"_{args.kinds[0]}"
    name += "_cond" if args.model == "cond" else ""
    name += "" if args.guidance is None else f"_cfg{args.guidance:g}"
    name += "" if args.guidance_interval is None else "_interval{:g}-{:g}".format(*args.guidance_interval)
    small = "" if args.guide_channels is None else f"small{args.guide_channels}_"
    return name + ("" if args.quick else f"_guide{small}{args.guide_at:g}")  # one file per guide: a sweep keeps each


def recipe_guide(args, ldm_recipe: Path) -> bool:
    """Whether this run samples as its recipe would: a snapshot guide at the recipe's ``train.guide_at`` (any, for a
    recipe without one, as the shapes ones), the recipe's CFG and interval: the budget curve's autoguided rows are only
    those."""
    import yaml

    recipe_at = (yaml.safe_load(ldm_recipe.read_text()).get("train") or {}).get("guide_at")
    return (args.guide_channels is None and args.guidance is None and args.guidance_interval is None
            and recipe_at in (None, args.guide_at))


if __name__ == "__main__":
    main()
