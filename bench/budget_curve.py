#!/usr/bin/env python
"""Sample quality against a total CPU budget: does the diffusion prior beat the Gaussian mixture at every budget?

    OMP_NUM_THREADS=1 python bench/budget_curve.py                    # Fashion-MNIST, VAE and RAE, 10 / 20 / 45 min
    python bench/budget_curve.py --budgets 10 20 --ae-share 0.3 --seeds 0 1 2
    python bench/budget_curve.py --quick                              # shapes, tiny fixed steps: a smoke test

What is measured. For each autoencoder kind (VAE: the recipes ae_kl.yaml + ldm_kl.yaml; RAE: ae_rae.yaml +
ldm_rae.yaml of configs/<dataset>/) and each total budget B (CPU minutes of both training commands, one
thread each), the autoencoder is trained with ``--ae-share`` of B and each stage-two model with the rest,
through the commands themselves (train_ae.py, train_diffusion.py as subprocesses). Each run's steps are sized
so its cosine learning-rate schedule ends inside its share: a calibration (below) gives a stage's fixed cost
(start-up, data, the latent cache it encodes, the final evaluation) and its CPU seconds per step, and
``train.steps = floor((share - fixed) / per_step)``; the recipe's warm-ups keep their fraction of the schedule,
and ``train.max_minutes`` (wall clock: twice the share plus a minute) is only a safety cap. Every stage-two run
encodes its own latent cache (in its run folder, removed after training), so the encode is charged to every run
alike.

Sets scored, with the library's evaluation (``latentdiff.evaluation.evaluate_run``: the project's judge, FD on
its features, precision/recall with k = 3, ``--num`` samples against ``--num`` held-out test images), at the
recipes' current sampler settings (a run trained before the recipe's sample section changed is scored at the
new ones: sampling is not training), once per sampling seed (``--seeds``; mean, standard deviation, min and max):

  dedicated_uncond    a stage-two model trained without attributes (the recipe with conditioning.enabled=false)
  cond_model_uncond   the class-conditional model sampled with every attribute unspecified (its unconditional
                      branch: what the recipe gives a user who asks for no class)
  cond_model_cfg      the class-conditional model asked for the reference images' classes, classifier-free
                      guidance at the recipe's scale (its class accuracy is recorded)
  cond_model_drawn    the class-conditional model with nothing asked but every attribute drawn from the training
                      data's combinations and guided at the recipe's scale (sample.unasked=data): samples of the
                      marginal p(x) = Σ_c p_data(c) p(x | c) that use the labels the model was trained with
  gmm                 the baseline to beat: an ex-post Gaussian mixture (Ghosh et al. 2020) fitted on the same
                      autoencoder's training latents (its fit is not charged to the budget)
  reconstructions     the same autoencoder's reconstructions of test images: the floor any prior can reach
  data                other held-out test images: the judge's own floor

Calibration: per autoencoder kind, each stage (the autoencoder, the conditional and the unconditional
stage-two model) is trained twice for a few dozen steps (``--calib-steps N1 N2``) in throw-away run folders;
the child's CPU time (user + system, ``resource.getrusage(RUSAGE_CHILDREN)``) of the two gives the seconds per
step as the slope and the fixed cost as the intercept. It is written to <out-dir>/calibration.json and reused
on reruns, so a resumed sweep asks for the same steps. ``--steps AE LDM`` skips it and trains fixed step counts
(the x axis is then the measured CPU time).

Resumable: a run whose folder holds its last checkpoint at the asked step, and an evaluation whose JSON exists,
are not redone (a run folder made from another recipe, outside its sample section, or other overrides is
refused); an interrupted run
continues from its checkpoint (its CPU time is the sum of its attempts). A sweep may run in pieces (``--kinds rae
--budgets 45`` later, or two budgets as two processes on two cores): the JSON keeps the points that earlier
sweeps of the same ``--out-dir`` wrote, beside the new ones.
Writes bench/results/budget_curve_<dataset>.json (``LATENTDIFF_BENCH_RESULTS`` moves it) and a PNG beside it:
FD against CPU minutes, one line per set, VAE and RAE as two panels (matplotlib, requirements-bench.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, locked, provenance, relative_to_checkout, results_path, write_json, write_results  # noqa: E402

KINDS = {"vae": ("ae_kl", "ldm_kl"), "rae": ("ae_rae", "ldm_rae")}  # recipes in configs/<dataset>/
MODELS = {"uncond": ["conditioning.enabled=false"], "cond": []}  # the stage-two models, as recipe overrides
# Scored set -> (stage-two model whose evaluation holds it, key in the evaluation's "samples").
VARIANTS = {"dedicated_uncond": ("uncond", "ldm"), "cond_model_uncond": ("cond", "ldm"),
            "cond_model_cfg": ("cond", "ldm_conditional"), "cond_model_drawn": ("cond", "ldm_drawn_attributes"),
            "gmm": ("cond", "gmm"),
            "reconstructions": ("cond", "reconstructions"), "data": ("cond", "data")}
SAMPLED = ("dedicated_uncond", "cond_model_uncond", "cond_model_cfg", "cond_model_drawn")  # sets a stage two drew
# Rows bench/autoguidance.py adds to this curve's JSON: a curve point's stage two retrained with the same steps and a
# guide snapshot (train.guide_at, which leaves training as it is), sampled autoguided. Variant -> the curve's variant
# whose runs it retrains; a rerun of the curve keeps such a row while that variant's steps are still the row's.
AUTOGUIDED = {"dedicated_uncond_autoguided": "dedicated_uncond", "cond_model_cfg_autoguided": "cond_model_cfg"}
METRICS = ("fd", "precision", "recall")
SCHEDULE_KEYS = ("train.warmup_steps", "loss.kl_warmup_steps")  # scaled with the steps, as fractions

# --quick: the shapes recipes on a few hundred images, fixed tiny step counts, tiny evaluation.
QUICK_DATA = ["data.train_size=256", "data.test_size=64", "train.batch_size=32"]
QUICK_AE = [*QUICK_DATA, "eval_samples=32"]
QUICK_LDM = [*QUICK_DATA, "bound_examples=16", "sample.num=12", "sample.steps=4", "denoiser.channels=32"]
QUICK_SAMPLE_STEPS = 2  # the reverse steps of a --quick evaluation (every bench scoring the quick curve's runs)


# ----------------------------------------------------------------------------- steps from a CPU budget


def fit_calibration(points: list[tuple[int, float]]) -> dict:
    """(steps, CPU seconds) of two or more runs of one stage -> {"per_step_s", "fixed_s"} (least squares line)."""
    n = len(points)
    if n < 2 or len({s for s, _ in points}) < 2:
        raise ValueError("calibration needs runs of at least two different step counts")
    mx = sum(s for s, _ in points) / n
    my = sum(c for _, c in points) / n
    slope = sum((s - mx) * (c - my) for s, c in points) / sum((s - mx) ** 2 for s, _ in points)
    if slope <= 0:
        raise ValueError(f"calibration runs {points} do not grow with the steps: run longer ones (--calib-steps)")
    return {"per_step_s": slope, "fixed_s": max(0.0, my - slope * mx), "runs": [list(p) for p in points]}


def steps_for(budget_s: float, calibration: dict) -> int:
    """Optimiser steps whose whole run (fixed cost + steps) fits in ``budget_s`` CPU seconds."""
    steps = math.floor((budget_s - calibration["fixed_s"]) / calibration["per_step_s"] + 1e-9)  # not 1 - 1e-16 short
    if steps < 1:
        raise ValueError(f"a budget of {budget_s:.0f} CPU-s does not cover the stage's fixed cost of "
                         f"{calibration['fixed_s']:.0f} s; give larger --budgets or a different --ae-share")
    return steps


def schedule_overrides(recipe: dict, steps: int, eval_once: bool = True) -> list[str]:
    """Overrides that make a recipe a ``steps``-step run with the same schedule shape: warm-ups keep their
    fraction of the recipe's steps; evaluation and image grids only at the end (a fixed cost, as calibrated)."""
    out = [f"train.steps={steps}"]
    for key in SCHEDULE_KEYS:
        value = recipe.get(key)
        if value:
            out.append(f"{key}={min(value, round(value * steps / recipe['train.steps']))}")
    if eval_once:
        out += [f"train.eval_every={steps}", f"train.image_every={steps}"]
        if "bound_every" in recipe:
            out.append(f"bound_every={steps + 1}")  # the bound's periodic cost would not be in the calibration
    return out


# ----------------------------------------------------------------------------- the commands


def cpu_of_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def last_step(run: Path) -> int | None:
    """The step of a run folder's last checkpoint, or None."""
    from latentdiff.checkpoints import load_checkpoint

    path = run / "checkpoints" / "last.pt"
    return int(load_checkpoint(path)["step"]) if path.exists() else None


def train(script: str, recipe: Path, run: Path, steps: int, overrides: list[str], cap_minutes: float,
          keep_cache: bool = False) -> dict:
    """Train ``run`` (= out_dir/name) with a command for ``steps`` steps unless it already did; returns its record
    {command, steps_asked, steps_trained, cpu_s (summed over attempts), attempts, capped}, kept in the folder."""
    record_path = run / "budget_curve_run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    # what decides the run besides its steps: the recipe's training part and the overrides (an edited recipe is a
    # new run; records from before this check carry no "made_from" and are taken as they are)
    made_from = {"training_sha256": hashlib.sha256(training_part(recipe)).hexdigest(), "overrides": list(overrides)}
    if record is not None and record["steps_asked"] != steps:
        raise ValueError(f"{run} was trained for {record['steps_asked']} steps and this sweep asks {steps} (another "
                         f"calibration, --ae-share or budget?); delete it or pick another --out-dir")
    if record is not None and record.get("made_from", made_from) != made_from:
        raise ValueError(f"{run} was trained from another recipe (outside its sample section) or other overrides "
                         f"than {recipe.name} "
                         f"{' '.join(overrides)}; delete it or pick another --out-dir")
    if record is not None and record.get("finished") and last_step(run) is not None:
        print(f"done already: {run.name} ({record['steps_trained']} steps, {record['cpu_s']:.0f} CPU-s)", flush=True)
        return record
    command = [sys.executable, str(ROOT / script), "--config", str(recipe), f"name={run.name}",
               f"out_dir={run.parent}", *overrides, *schedule_overrides(recipe_values(recipe), steps),
               f"train.max_minutes={cap_minutes:.3g}"]
    if script == "train_diffusion.py":
        # its own cache (the encode is in its budget), beside the run folder: a run folder holds only its run
        command.append(f"latents.cache_dir={cache_of(run)}")
    record = record or {"run": str(run), "command": command, "steps_asked": steps, "cpu_s": 0.0, "attempts": 0,
                        "made_from": made_from}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run.mkdir(parents=True, exist_ok=True)
    log = run.parent / f"{run.name}.log"
    print(f"training {run.name}: {steps} steps ({log})", flush=True)
    before = cpu_of_children()
    with open(log, "a") as f:
        child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # the child got the signal too: it saves last.pt; count its CPU, then stop
            child.wait()
            raise
        finally:
            record["cpu_s"] += cpu_of_children() - before
            record["attempts"] += 1
            record["steps_trained"] = last_step(run)
            write_json(record_path, record)
    if code != 0:
        from latentdiff.runtime import TrainingError

        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        print(tail, end="", file=sys.stderr)
        raise TrainingError(f"{script} failed for {run} (exit {code}); its output is in {log}")
    record.update(finished=True, capped=record["steps_trained"] < steps)
    if record["capped"]:
        print(f"note: {run.name} stopped at the wall-clock cap (train.max_minutes) after {record['steps_trained']} of "
              f"{steps} steps", flush=True)
    write_json(record_path, record)
    if not keep_cache:
        shutil.rmtree(cache_of(run), ignore_errors=True)
    return record


def off_budget(shares_s: dict, runs: dict, tolerance: float = 0.15) -> list[str]:
    """One line per stage whose measured CPU time strays from its share by more than ``tolerance``: a calibration
    made under load (other processes on the cores) can misjudge the cost per step, and the point then stands at
    the wrong x. The JSON keeps the measured minutes either way (``cpu_min``)."""
    lines = []
    for stage, share in shares_s.items():
        ratio = runs[stage]["cpu_s"] / share
        if abs(ratio - 1) > tolerance:
            lines.append(f"{stage} took {runs[stage]['cpu_s'] / 60:.1f} CPU-min for a share of {share / 60:.1f} "
                         f"({ratio:.2f}x): recalibrate alone (delete calibration.json's entry and the calibration "
                         f"runs) if the machine was busy")
    return lines


def cache_of(run: Path) -> Path:
    """The latent cache a stage-two run of this sweep encodes for itself: <run>.latent_cache beside it."""
    return run.parent / f"{run.name}.latent_cache"


def training_part(recipe: Path) -> bytes:
    """The recipe as far as it decides the trained weights, as canonical JSON: every section but ``sample`` (the
    sampling defaults, read only when sampling; a run is scored at the recipe's current ones, ``recipe_sampling``)."""
    import yaml

    values = yaml.safe_load(recipe.read_text()) or {}
    values.pop("sample", None)
    return json.dumps(values, sort_keys=True).encode()


SAMPLING_KEYS = ("sampler", "steps", "eta", "guidance_scale", "guidance_interval")


def sampling_of(config: Path) -> dict:
    """The sampler settings a stage-two recipe or run config gives (library defaults filled in); for an
    unconditional model without its guidance keys, which it does not use."""
    from latentdiff.config import LDMRunConfig, load_config

    cfg = load_config(LDMRunConfig, config, ["ae.run=null"])
    out = {k: getattr(cfg.sample, k) for k in SAMPLING_KEYS}
    if out["guidance_interval"] is not None:
        out["guidance_interval"] = [float(v) for v in out["guidance_interval"]]  # as the eval JSON holds it
    if not cfg.conditioning.enabled:
        del out["guidance_scale"], out["guidance_interval"]
    return out


def recipe_sampling(recipe: Path, run: Path) -> dict:
    """The recipe's sampler settings where they differ from those ``run`` was trained with: a run made before the
    recipe's sample section changed is scored at the recipe's current settings (its evaluation files named after
    them), one made since at its own (eval_seed<K>.json)."""
    own = sampling_of(run / "config.yaml")
    return {k: v for k, v in sampling_of(recipe).items() if k in own and own[k] != v}


def recipe_values(recipe: Path) -> dict:
    """The recipe's scheduling keys (defaults filled in by the library's config classes)."""
    from latentdiff.config import AERunConfig, LDMRunConfig, load_config

    is_ldm = recipe.stem.startswith("ldm")
    cfg = load_config(LDMRunConfig if is_ldm else AERunConfig, recipe, ["ae.run=null"] if is_ldm else [])
    out = {"train.steps": cfg.train.steps, "train.warmup_steps": cfg.train.warmup_steps}
    if is_ldm:
        out["bound_every"] = cfg.bound_every
    else:
        out["loss.kl_warmup_steps"] = getattr(cfg.loss, "kl_warmup_steps", 0)
    return out


def calibrate(args, recipes: dict, folder: Path) -> dict:
    """Per kind: {"ae": fit, "uncond": fit, "cond": fit} from short runs of each stage (see the docstring)."""
    path = folder / "calibration.json"
    key = {"dataset": args.dataset, "calib_steps": args.calib_steps, "ae_overrides": args.ae_overrides,
           "ldm_overrides": args.ldm_overrides}
    saved = json.loads(path.read_text()) if path.exists() else {"key": key, "stages": {}}
    if saved["key"] != key:
        raise ValueError(f"{path} was calibrated with other settings ({saved['key']}); delete it or pick another "
                         f"--out-dir")
    stages = saved["stages"]
    for kind in args.kinds:
        if kind in stages:
            print(f"calibration of {kind} from {path}", flush=True)
            continue
        ae_recipe, ldm_recipe = recipes[kind]
        points, ae_run = [], None
        for n in args.calib_steps:
            ae_run = folder / "calibration" / f"{kind}_ae_{n}"
            r = train("train_ae.py", ae_recipe, ae_run, n, args.ae_overrides, cap_minutes=30)
            points.append((n, r["cpu_s"]))
        fits = {"ae": fit_calibration(points)}
        for model, extra in MODELS.items():
            points = []
            for n in args.calib_steps:
                run = folder / "calibration" / f"{kind}_ldm_{model}_{n}"
                r = train("train_diffusion.py", ldm_recipe, run, n,
                          [f"ae.run={ae_run}", *extra, *args.ldm_overrides], cap_minutes=30)
                points.append((n, r["cpu_s"]))
            fits[model] = fit_calibration(points)
        print(f"calibration {kind}: " + ", ".join(f"{s} {c['per_step_s']:.3f} s/step + {c['fixed_s']:.1f} s"
                                                  for s, c in fits.items()), flush=True)
        stages[kind] = fits
        with locked(path):  # a sweep of another kind may have added its own since this one read the file
            now = json.loads(path.read_text()) if path.exists() else {"key": key, "stages": {}}
            write_json(path, {"key": key, "stages": {**now["stages"], kind: fits}})
    return stages


# ----------------------------------------------------------------------------- scoring


def evaluate(args, run: Path, seed: int, gmm: bool, sampling: dict | None = None, guide: Path | None = None) -> dict:
    """The library's evaluation of a stage-two run at one sampling seed, written to <run>/eval_seed<K>.json and
    read back from there on reruns. ``sampling`` ({"sampler", "steps", "eta", "guidance_scale", "guidance_interval",
    "autoguidance_scale"}, any of them) overrides the run's own sampler settings and names the file after them:
    eval_seed0_steps50_samplerddim_eta1.json, eval_seed0_guidance_interval0-0.6.json. ``guide``: another run to
    autoguide with (``evaluate.py --guide``), named in the file as _guide<its folder's name>."""
    from latentdiff.evaluation import EvalOptions, evaluate_run

    # --sample-steps, when given, wins over the recipe's (a quick run's training-time sample.steps is not a recipe);
    # "steps" stays the first key either way, so the file names (the cache) keep their order
    sampling = {"steps": args.sample_steps} | (sampling or {})
    if args.sample_steps is not None:
        sampling["steps"] = args.sample_steps
    asked = {k: v for k, v in sampling.items() if v is not None}
    def text(v):
        return f"{v:g}" if isinstance(v, float) else "-".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v}"

    suffix = "".join(f"_{k}{text(v)}" for k, v in asked.items() if (k, v) != ("steps", args.sample_steps))
    suffix += f"_guide{guide.name}" if guide is not None else ""
    out = run / f"eval_seed{seed}{suffix}.json"
    if out.exists() and out.stat().st_mtime >= (run / "checkpoints" / "last.pt").stat().st_mtime:
        saved = json.loads(out.read_text())  # reused when it scored these weights with these settings
        if (saved["settings"]["num"] == args.num and all(saved["settings"].get(k) == v for k, v in asked.items())
                and ("gmm" in saved["samples"]) == gmm):
            return saved
    options = EvalOptions(run=str(run), num=args.num, seed=seed, sampler=sampling.get("sampler"),
                          steps=sampling.get("steps"), eta=sampling.get("eta"),
                          guidance=sampling.get("guidance_scale"),
                          guidance_interval=sampling.get("guidance_interval"),
                          autoguidance=sampling.get("autoguidance_scale"),
                          guide=None if guide is None else str(guide),
                          baselines="gmm" if gmm else "none", gmm_components=args.gmm_components,
                          gmm_fit_examples=args.gmm_fit_examples, bound_examples=args.bound_examples,
                          bound_timesteps=args.bound_timesteps, classifier_dir=str(args.classifier_dir),
                          classifier_steps=args.classifier_steps, no_inception=True, out=str(out), no_progress=True)
    evaluate_run(options)
    return json.loads(out.read_text())  # as written: NaN already null


def summary(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}


def seed_columns(per_seed: list[dict], class_accuracy: bool = False) -> dict:
    """One scored set's scores at each sampling seed -> its table columns: each metric's mean, standard deviation,
    min and max, the FD of every seed, and (``class_accuracy``) the mean joint attribute accuracy."""
    columns = {}
    for m in METRICS:
        s = summary([scores.get(m) for scores in per_seed])
        columns[m] = s["mean"]
        columns[f"{m}_std"], columns[f"{m}_min"], columns[f"{m}_max"] = s["std"], s["min"], s["max"]
    columns["fd_seeds"] = [scores.get("fd") for scores in per_seed]
    if class_accuracy:
        columns["class_accuracy"] = summary([(s.get("attribute_accuracy") or {}).get("joint")
                                             for s in per_seed])["mean"]
    return columns


def point_rows(point: dict) -> list[dict]:
    """One table row per scored set of a (kind, budget) point: metrics as mean and spread over seeds."""
    rows = []
    for variant, (model, _) in VARIANTS.items():
        per_seed = point["scores"][variant]
        sampled = variant in SAMPLED  # else: no stage two
        row = {"kind": point["kind"], "budget_min": point["budget_min"], "variant": variant,
               "cpu_min": point["cpu_min"][model if sampled else "ae"],
               "ae_steps": point["runs"]["ae"]["steps_trained"],
               "ldm_steps": point["runs"][model]["steps_trained"] if sampled else None}
        rows.append(row | seed_columns(list(per_seed.values()), class_accuracy=variant == "cond_model_cfg"))
    return rows


def plot(rows: list[dict], kinds: list[str], path: Path, x_label: str) -> None:
    """FD against CPU minutes, one line per scored set (error bars: min to max over seeds), one panel per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"dedicated_uncond": ("tab:blue", "-", "o", "unconditional LDM"),
              "cond_model_uncond": ("tab:orange", "-", "s", "conditional LDM, no class asked"),
              "cond_model_cfg": ("tab:green", "-", "^", "conditional LDM, class + CFG"),
              "cond_model_drawn": ("tab:olive", "-", "v", "conditional LDM, class drawn from the data + CFG"),
              "dedicated_uncond_autoguided": ("tab:purple", "-.", "o", "unconditional LDM, autoguided"),
              "cond_model_cfg_autoguided": ("tab:cyan", "-.", "^", "conditional LDM, class + CFG + autoguidance"),
              "gmm": ("tab:red", "--", "D", "ex-post GMM, same autoencoder"),
              "reconstructions": ("gray", ":", ".", "reconstructions (floor)"),
              "data": ("black", ":", ".", "other test images (judge floor)")}
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 5.2), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        for variant, (color, line, marker, label) in styles.items():
            pts = sorted((r["x_min"], r["fd"], r["fd_min"], r["fd_max"]) for r in rows
                         if r["kind"] == kind and r["variant"] == variant and r["fd"] is not None)
            if not pts:
                continue
            x, y, lo, hi = zip(*pts)
            ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]], color=color,
                        linestyle=line, marker=marker, capsize=3, label=label)
        ax.set_title(kind.upper())
        ax.set_xlabel(x_label)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("FD (judge features), lower is better")
    drawn = {}  # one legend for the panels, below them: a set drawn in either panel, in the styles' order
    for ax in axes[0]:
        drawn.update(zip(*reversed(ax.get_legend_handles_labels())))
    order = [label for *_, label in styles.values() if label in drawn]
    fig.legend([drawn[label] for label in order], order, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * math.ceil(len(order) / 3), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- the sweep


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist", help="recipes from configs/<dataset>/ (shapes, ...)")
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    p.add_argument("--budgets", nargs="+", type=float, default=None,
                   help="total CPU minutes of both training commands, one thread each (default 10 20 45)")
    p.add_argument("--ae-share", type=float, default=0.3,
                   help="fraction of each budget for the autoencoder; each stage-two model gets the rest (the "
                        "recipes' own split is 13.5 : 30 minutes, about 0.3)")
    p.add_argument("--steps", nargs=2, type=int, metavar=("AE", "LDM"), default=None,
                   help="fixed step counts instead of budgets (no calibration)")
    p.add_argument("--calib-steps", nargs=2, type=int, metavar=("N1", "N2"), default=[20, 120],
                   help="the two short runs per stage that give its seconds per step and fixed cost")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="sampling seeds (default 0 1 2)")
    p.add_argument("--num", type=int, default=1000, help="samples per set, and held-out reference images")
    p.add_argument("--sample-steps", type=int, default=None, help="reverse steps (default: the recipe's)")
    p.add_argument("--classifier-steps", type=int, default=None, help="judge training steps (default: the library's)")
    p.add_argument("--gmm-components", type=int, default=10)
    p.add_argument("--gmm-fit-examples", type=int, default=10000)
    p.add_argument("--bound-examples", type=int, default=16,
                   help="the evaluation always computes likelihood bounds; this bench does not report them, so "
                        "they are kept cheap")
    p.add_argument("--bound-timesteps", type=int, default=4)
    p.add_argument("--out-dir", type=Path, default=None,
                   help="run folders (default: runs/bench/budget_curve_<dataset>)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: shapes, tiny data, 16 samples, 2 sampling steps, seeds 0 1, and --steps 8 8 "
                        "unless --budgets are given (then calibrated, e.g. --budgets 0.4 --calib-steps 2 6)")
    args = p.parse_args(argv)
    args.ae_overrides, args.ldm_overrides = [], []
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    if args.quick:
        args.dataset, args.num, args.sample_steps = "shapes", 16, QUICK_SAMPLE_STEPS
        if args.budgets is None:
            args.steps = args.steps or [8, 8]
        args.classifier_steps, args.gmm_components, args.gmm_fit_examples = 5, 2, 128
        args.bound_examples, args.bound_timesteps = 4, 2
        args.ae_overrides, args.ldm_overrides = QUICK_AE, QUICK_LDM
    args.budgets = args.budgets or [10.0, 20.0, 45.0]
    if not 0 < args.ae_share < 1:
        p.error(f"--ae-share {args.ae_share}: give a fraction between 0 and 1")
    if args.steps is not None and min(args.steps) < 1:
        p.error("--steps: give at least 1 step per stage")
    if len(set(args.calib_steps)) < 2 or min(args.calib_steps) < 1:
        p.error("--calib-steps: give two different step counts of at least 1")
    if args.out_dir is None:
        args.out_dir = ROOT / "runs" / "bench" / f"budget_curve_{args.dataset}{'_quick' if args.quick else ''}"
    args.out_dir = args.out_dir.resolve()
    args.classifier_dir = args.out_dir / "classifiers"  # the judge, trained once per sweep folder
    return args


def check_before_work(args, recipes: dict) -> None:
    """One line (exit 2) for what would otherwise fail hours in: recipes, the dataset, scikit-learn, matplotlib."""
    from latentdiff.builders import build_data
    from latentdiff.config import AERunConfig, load_config
    from latentdiff.evaluation import EvalOptions, check_options

    for kind in args.kinds:
        for recipe in recipes[kind]:
            if not recipe.is_file():
                raise FileNotFoundError(f"--dataset {args.dataset}: {recipe} does not exist")
    check_options(EvalOptions(run="", num=args.num, baselines="gmm"))  # scikit-learn present, --num sane
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("the plot needs matplotlib: pip install -r requirements-bench.txt "
                             "(or pass --no-plot)") from None
    data = load_config(AERunConfig, recipes[args.kinds[0]][0], args.ae_overrides).data
    build_data(data, "test")  # the dataset loader's own one-line message when the files are absent


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from latentdiff.cli import user_errors
    from latentdiff.runtime import flush_denormals

    torch.set_num_threads(1)
    flush_denormals()
    folder = ROOT / "configs" / args.dataset
    recipes = {k: (folder / f"{ae}.yaml", folder / f"{ldm}.yaml") for k, (ae, ldm) in KINDS.items()}
    with user_errors():
        check_before_work(args, recipes)
        calibration = None if args.steps else calibrate(args, recipes, args.out_dir)
        points = []
        for budget in ([None] if args.steps else sorted(args.budgets)):
            for kind in args.kinds:
                points.append(run_point(args, recipes[kind], kind, budget, calibration) | {
                    "command": provenance()["command"]})
    name = f"budget_curve_{args.dataset}{'_quick' if args.quick else ''}"
    with locked(results_path(name)):  # a sweep of the other kind, or bench/autoguidance.py, may write it meanwhile
        earlier = json.loads(results_path(name).read_text()) if results_path(name).exists() else {}
        points = with_earlier_points(earlier, args.out_dir, points)
        rows = [row for point in points for row in point_rows(point)]
        for row in rows:  # the plot's x: the budget, or the measured CPU time when the steps were fixed
            row["x_min"] = row["budget_min"] if row["budget_min"] is not None else row["cpu_min"]
        guided, dropped = same_steps([r for r in earlier.get("rows", []) if r["variant"] in AUTOGUIDED], rows)
        for row in dropped:
            print(f"note: dropped the {row['variant']} row of {row['kind']} at {budget_text(row['budget_min'])}: "
                  f"the curve's runs there now have other steps; bench/autoguidance.py adds it again", flush=True)
        rows += guided
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        columns = ["kind", "budget_min", "cpu_min", "variant", "ae_steps", "ldm_steps", "fd", "fd_std", "precision",
                   "recall", "class_accuracy"]
        out = write_results(name, rows, columns, extra={
            "settings": settings, "threads": 1, "commit": git_commit(), "calibration": calibration,
            "variants": {v: {"model": m, "eval_set": s} for v, (m, s) in VARIANTS.items()}, "points": points,
            "plot": None if args.no_plot else f"{name}.png"})
        if not args.no_plot:
            plot_curve(rows, settings, out.with_suffix(".png"))


def plot_curve(rows: list[dict], settings: dict, path: Path) -> None:
    """The curve's plot of ``rows``: x is the budget, or the measured CPU time when the sweep fixed the steps."""
    x_label = "total CPU minutes, both stages (budget)" if not settings.get("steps") else \
        "measured CPU minutes, both stages"
    plot(rows, [k for k in KINDS if any(r["kind"] == k for r in rows)], path, x_label)


def budget_text(minutes: float | None) -> str:
    return "fixed steps" if minutes is None else f"{minutes:g} CPU minutes"


def same_steps(guided: list[dict], rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split autoguided rows (``AUTOGUIDED``) into those whose point in the curve's ``rows`` has the same autoencoder
    and stage-two steps for the variant they retrain (the same runs but for the guide: kept) and the others."""
    steps = {(r["kind"], r["budget_min"], r["variant"]): (r["ae_steps"], r["ldm_steps"]) for r in rows}
    kept, other = [], []
    for row in guided:
        same = steps.get((row["kind"], row["budget_min"], AUTOGUIDED[row["variant"]])) == (row["ae_steps"],
                                                                                            row["ldm_steps"])
        (kept if same else other).append(row)
    return kept, other


def add_autoguided(path: Path, new: list[dict], plot_it: bool = True) -> list[str]:
    """Write autoguided rows (bench/autoguidance.py) into the curve's JSON at ``path``, each replacing the row of its
    kind, budget and variant, and redraw the curve's plot (when it has one and ``plot_it``). A row whose point the
    curve lacks, or holds with other steps, is not added: one note each is returned."""
    if not path.exists():
        return [f"{path.name} does not exist (run bench/budget_curve.py first): no row added to it"]
    with locked(path):  # the other kind's bench may add its rows at the same time
        curve = json.loads(path.read_text())
        fits, other = same_steps(new, curve["rows"])
        replaced = {(r["kind"], r["budget_min"], r["variant"]) for r in fits}
        curve["rows"] = [r for r in curve["rows"] if (r["kind"], r["budget_min"], r["variant"]) not in replaced] + fits
        write_json(path, relative_to_checkout(curve))
        notes = []
        if plot_it and fits and curve.get("plot"):
            try:
                plot_curve(curve["rows"], curve.get("settings", {}), path.with_suffix(".png"))
            except ImportError:  # hours of training are not lost to a missing plotting library: the JSON is written
                notes.append(f"{path.with_suffix('.png').name} not redrawn: it needs matplotlib (pip install -r "
                             f"requirements-bench.txt); rerun this command, which trains and samples nothing again")
    return [f"{row['variant']} of {row['kind']} at {budget_text(row['budget_min'])} not added to {path.name}: it has "
            f"no such point with {row['ae_steps']} + {row['ldm_steps']} steps" for row in other] + notes


def with_earlier_points(earlier: dict, out_dir: Path, points: list[dict]) -> list[dict]:
    """This sweep's points and those that earlier sweeps of the same run folder wrote to the JSON ``earlier`` for
    other (kind, budget) pairs, in budget then kind order: a sweep run in pieces (a budget or a kind at a time, or
    several at once on several cores) keeps one JSON and one plot. Each point names the command that scored it.
    The JSON names the folder relative to the checkout (write_results), older ones absolutely: both resolve."""
    earlier_dir = earlier.get("settings", {}).get("out_dir")
    if earlier_dir is None or (ROOT / earlier_dir).resolve() != out_dir:
        return points  # another sweep's folder (or none): its points are not this sweep's runs
    done = {(p["kind"], p["budget_min"]) for p in points}
    kept = [p for p in earlier.get("points", []) if (p["kind"], p["budget_min"]) not in done]
    return sorted(kept + points, key=lambda p: (p["budget_min"] is None, p["budget_min"] or 0,
                                                list(KINDS).index(p["kind"])))


def run_point(args, recipes, kind: str, budget: float | None, calibration: dict | None) -> dict:
    """Train one autoencoder and both stage-two models for one budget (or fixed steps), then score every seed."""
    ae_recipe, ldm_recipe = recipes
    if budget is None:
        tag, ae_steps, ldm_steps = f"steps{args.steps[0]}_{args.steps[1]}", args.steps[0], {m: args.steps[1]
                                                                                            for m in MODELS}
        ae_cap = ldm_cap = 30.0
    else:
        ae_s, ldm_s = 60 * budget * args.ae_share, 60 * budget * (1 - args.ae_share)
        tag = f"{budget:g}min"
        ae_steps = steps_for(ae_s, calibration[kind]["ae"])
        ldm_steps = {m: steps_for(ldm_s, calibration[kind][m]) for m in MODELS}
        ae_cap, ldm_cap = 2 * ae_s / 60 + 1, 2 * ldm_s / 60 + 1
    where = args.out_dir / tag
    runs = {"ae": train("train_ae.py", ae_recipe, where / f"{kind}_ae", ae_steps, args.ae_overrides, ae_cap)}
    for model, extra in MODELS.items():
        runs[model] = train("train_diffusion.py", ldm_recipe, where / f"{kind}_ldm_{model}", ldm_steps[model],
                            [f"ae.run={where / f'{kind}_ae'}", *extra, *args.ldm_overrides], ldm_cap)
    if budget is not None:
        for line in off_budget({"ae": ae_s, **{m: ldm_s for m in MODELS}}, runs):
            print(f"note: {kind} {budget:g} min: {line}", flush=True)
    sampling = {model: recipe_sampling(ldm_recipe, where / f"{kind}_ldm_{model}") for model in MODELS}
    evals = {model: {seed: evaluate(args, where / f"{kind}_ldm_{model}", seed, gmm=model == "cond",
                                    sampling=sampling[model])
                     for seed in args.seeds} for model in MODELS}
    scores = {}
    for variant, (model, key) in VARIANTS.items():
        scores[variant] = {str(seed): evals[model][seed]["samples"].get(key, {}) for seed in args.seeds}
    first = evals["cond"][args.seeds[0]]
    return {"kind": kind, "budget_min": budget, "folder": str(where),
            "cpu_min": {"ae": runs["ae"]["cpu_s"] / 60,
                        **{m: (runs["ae"]["cpu_s"] + runs[m]["cpu_s"]) / 60 for m in MODELS}},
            "runs": {k: {key: v for key, v in r.items() if key != "command"} | {"command": r["command"][1:]}
                     for k, r in runs.items()},
            "sampling": {k: first["settings"].get(k) for k in (*SAMPLING_KEYS, "num")},
            "judge": first["judge"], "scores": scores}


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return None
    return r.stdout.strip() or None


if __name__ == "__main__":
    main()
