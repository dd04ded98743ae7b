#!/usr/bin/env python
"""Joint training (LSGM-style, #27) against more stage two alone, at equal extra CPU from one two-stage run.

    python bench/joint_training.py --start runs/bench/autoguidance/20min/vae_ldm_uncond_guide0.25
    python bench/joint_training.py --start RUN --extra 15 30 --other-extra 15 --seeds 0 1 2
    python bench/joint_training.py --start runs/shapes_ldm_kl --quick          # fixed tiny steps: a smoke test

From the trained two-stage VAE run ``--start`` (a), each ``--extra`` X CPU-minutes (one thread) buys either
(b) more stage two alone: a copy of the run resumed for that many more steps (its own recipe; a cosine schedule
stretches to the new step count), or (c) joint training (``train_joint.py`` with configs/fashion_mnist/joint_kl.yaml,
constant learning rate after its warm-up, so the X = 15 point is the first leg of the X = 30 run). Step counts
come from two short calibration runs per kind (seconds per step and fixed cost, as bench/budget_curve.py does);
every training runs with OMP_NUM_THREADS=1, ``--jobs`` at a time, and its own CPU time (``os.wait4``) is recorded.
``--other-extra`` X adds (c') joint training with the other ``joint.denoiser_objective`` than the recipe's
(``reweighted``: the denoiser on its stage-two loss, ``likelihood``: on the bound itself). ``--finish S`` adds
(c''), for each ``--finish-extra`` X: a share S of the X minutes joint, the rest with the autoencoder frozen and the
denoiser on its stage-two loss (``joint.autoencoder_steps``, calibrated as a kind of its own); (c) itself trains
jointly to the end (``joint.autoencoder_steps=null``), whatever the recipe says.

Scored for every point:
- the two-stage bound in bits/dim on the first ``--bound-examples`` test images (``evaluate.py``'s bound: decoder
  variance fitted on the next as many, ``--bound-timesteps`` Monte Carlo timesteps per image), with its standard
  error over images and the three terms;
- reconstruction PSNR, and FD / precision / recall of samples on the project judge at each ``--seeds`` (the
  library's evaluation, the run's recipe sampler); conditional runs add the class-conditional set and its
  class accuracy.
Writes bench/results/joint_training_<start name>.json and a picture of (b), (c) (and (c'')) samples at the largest X
side by side (same noise), bench/results/joint_training_<start name>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from budget_curve import fit_calibration, last_step, steps_for  # noqa: E402
from common import ROOT, results_path, write_json, write_results  # noqa: E402

sys.path.insert(0, str(ROOT))

JOINT_RECIPE = ROOT / "configs" / "fashion_mnist" / "joint_kl.yaml"
QUIET = ["train.eval_every={n}", "train.image_every={n}", "train.checkpoint_every={n}", "train.max_minutes=null"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", type=Path, required=True, help="a train_diffusion.py run on a VAE's latents")
    p.add_argument("--extra", type=float, nargs="+", default=[15.0, 30.0], help="extra CPU minutes per point")
    p.add_argument("--other-extra", type=float, default=15.0,
                   help="extra CPU minutes of joint training with the other joint.denoiser_objective (0: none)")
    p.add_argument("--finish", type=float, default=0.0, metavar="S",
                   help="(c''): share of the extra CPU trained jointly before the autoencoder freezes (0: none)")
    p.add_argument("--finish-extra", type=float, nargs="+", default=None,
                   help="extra CPU minutes of the (c'') points (default: every --extra)")
    p.add_argument("--steps", type=int, nargs=2, metavar=("STAGE_TWO", "JOINT"), default=None,
                   help="fixed steps per extra minute instead of calibration (--quick)")
    p.add_argument("--calib-steps", type=int, nargs=2, default=[20, 80])
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (one thread each)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num", type=int, default=1000, help="samples per set, and held-out reference images")
    p.add_argument("--bound-examples", type=int, default=1000)
    p.add_argument("--bound-timesteps", type=int, default=100)
    p.add_argument("--classifier-dir", type=Path, default=None,
                   help="the judge's cache (default: the autoguidance records' judge; --quick: <out-dir>/classifiers)")
    p.add_argument("--classifier-steps", type=int, default=None)
    p.add_argument("--out-dir", type=Path, default=None, help="default: runs/bench/joint/<start name>")
    p.add_argument("--quick", action="store_true", help="smoke test: --steps 2 2, tiny evaluation")
    args = p.parse_args(argv)
    if not (args.start / "checkpoints" / "last.pt").is_file():
        p.error(f"--start {args.start}: no checkpoints/last.pt; train both stages first")
    if not 0 <= args.finish < 1:
        p.error(f"--finish {args.finish}: give the joint share of the budget, 0 < S < 1 (0: no finishing points)")
    if args.quick:
        args.steps = args.steps or [2, 2]
        args.extra, args.other_extra, args.seeds = [1.0, 2.0], 1.0, [0]
        args.finish, args.finish_extra = args.finish or 0.5, None
        args.num, args.bound_examples, args.bound_timesteps, args.classifier_steps = 16, 8, 2, 5
        args.joint_overrides = ["joint.eval_examples=8", "joint.bound_timesteps=2", "train.batch_size=8",
                                "train.warmup_steps=0"]
    else:
        args.joint_overrides = []
    args.out_dir = args.out_dir or ROOT / "runs" / "bench" / "joint" / args.start.name
    args.classifier_dir = args.classifier_dir or (args.out_dir / "classifiers" if args.quick else
                                                  ROOT / "runs" / "bench" / "autoguidance" / "classifiers")
    args.finish_extra = (args.finish_extra or args.extra) if args.finish else []
    main = yaml.safe_load(JOINT_RECIPE.read_text())["joint"]["denoiser_objective"]
    args.objectives = {"joint_main": main, "joint_other": "reweighted" if main == "likelihood" else "likelihood"}
    return args


# ----------------------------------------------------------------------------- trainings


def run_command(command: list[str], log: Path) -> float:
    """Run a training command with one thread; its CPU seconds (this child alone, so jobs may overlap)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-15:]), end="", file=sys.stderr)
        raise RuntimeError(f"{command[1]} failed (exit {child.returncode}); its output is in {log}")
    return usage.ru_utime + usage.ru_stime


def drop_guide(run: Path) -> None:
    """A copied run extended to more steps would move its autoguidance guide's step (train.guide_at × train.steps),
    which resuming refuses: the copy forgets its guide (last.pt and config.yaml). Nothing here samples with it."""
    import yaml

    from latentdiff.checkpoints import load_checkpoint, save_checkpoint

    config = yaml.safe_load((run / "config.yaml").read_text())
    if config["train"].get("guide_at") is None:
        return
    config["train"]["guide_at"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("last.pt", "best.pt", "healthy.pt"):
        path = run / "checkpoints" / name
        if path.exists():
            state = load_checkpoint(path)
            state.update(guide=None, guide_step=None)
            state["config"]["train"]["guide_at"] = None
            path.unlink()  # healthy.pt may be a hard link of last.pt: never write through it
            save_checkpoint(state, path)


def stage_two_more(start: Path, folder: Path, steps: int, cache: Path) -> dict:
    """(b): a copy of ``start`` in ``folder`` resumed with ``steps`` more stage-two steps, its own recipe."""
    record = folder / "joint_bench_run.json"
    if record.exists():
        return json.loads(record.read_text())
    run = folder / start.name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(start, run, ignore=shutil.ignore_patterns("eval*.json", "joint_bench*", "samples", "tb"))
    drop_guide(run)
    total = last_step(start) + steps
    command = [sys.executable, str(ROOT / "train_diffusion.py"), "--config", str(run / "config.yaml"),
               f"out_dir={folder}", f"train.steps={total}", f"latents.cache_dir={cache}", f"bound_every={total + 1}",
               "train.guide_at=null",
               *(q.format(n=total) for q in QUIET)]
    out = {"run": str(run), "steps": steps, "cpu_s": run_command(command, folder.parent / f"{folder.name}.log"),
           "command": command}
    write_json(record, out)
    return out


def joint(start: Path, folder: Path, legs: list[int], objective: str, overrides: list[str]) -> list[dict]:
    """(c): ``train_joint.py`` from ``start`` run to each cumulative step count of ``legs`` in turn, the folder copied
    after each leg but the last (``<folder>_<steps>``): one run, its intermediate points kept."""
    out, cpu = [], 0.0
    for steps in legs:
        record = Path(f"{folder}_{steps}") / "joint_bench_run.json"
        if record.exists():
            out.append(json.loads(record.read_text()))
            cpu = out[-1]["cpu_s"]
            continue
        command = [sys.executable, str(ROOT / "train_joint.py"), "--config", str(JOINT_RECIPE),
                   f"start.run={start}", f"name={folder.name}", f"out_dir={folder.parent}",
                   f"joint.denoiser_objective={objective}", f"train.steps={steps}", "joint.autoencoder_steps=null",
                   *overrides,
                   *(q.format(n=legs[-1] + 1) for q in QUIET)]
        cpu += run_command(command, folder.parent / f"{folder.name}.log")
        point = Path(f"{folder}_{steps}")
        shutil.rmtree(point, ignore_errors=True)
        shutil.copytree(folder, point / folder.name)
        item = {"run": str(point / folder.name), "steps": steps, "cpu_s": cpu, "command": command}
        write_json(record, item)
        out.append(item)
    return out


def calibrate(args, cache: Path) -> dict:
    """Seconds per step and fixed cost of each kind from two short runs each (``--calib-steps``); kinds already in
    the out-dir's calibration.json are kept. ``finish``: the frozen-autoencoder steps of (c'') (one joint step, then
    the rest frozen; the joint step falls into the fixed cost)."""
    path = args.out_dir / "calibration.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    folder = args.out_dir / "calibration"
    kinds = ["stage_two", "joint_main"] + (["joint_other"] if args.other_extra else []) + \
        (["finish"] if args.finish else [])
    kinds = [k for k in kinds if k not in result]
    if not kinds:
        return result

    def one(kind, n):
        if kind == "stage_two":
            return n, stage_two_more(args.start, folder / f"stage_two_{n}", n, cache)["cpu_s"]
        objective = args.objectives["joint_other" if kind == "joint_other" else "joint_main"]
        frozen = ["joint.autoencoder_steps=1"] if kind == "finish" else []
        return n, joint(args.start, folder / f"{kind}_{n}", [n], objective, args.joint_overrides + frozen)[-1]["cpu_s"]

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(k, n): pool.submit(one, k, n) for k in kinds for n in args.calib_steps}
    result.update({k: fit_calibration([futures[(k, n)].result() for n in args.calib_steps]) for k in kinds})
    write_json(path, result)
    shutil.rmtree(folder, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- scores

def bound(run: Path, n: int, timesteps: int) -> dict:
    """The two-stage bound (bits/dim) of ``run`` on test images 0..n−1 per image, as evaluate.py computes it."""
    import torch

    from latentdiff import LatentDiffusion
    from latentdiff.builders import build_data
    from latentdiff.config import DataConfig, from_dict
    from latentdiff.metrics.likelihood import autoencoder_decoder_variance, diffusion_latent_nll, vae_bound

    torch.manual_seed(0)
    ldm = LatentDiffusion.from_run(run)
    test = build_data(from_dict(DataConfig, ldm.config["data"]), "test")
    n = min(n, len(test) // 2)
    x = torch.stack([test[i][0] for i in range(2 * n)])
    x, x_fit = x[:n], x[n:]
    ae = ldm.autoencoder
    with torch.no_grad():
        var = autoencoder_decoder_variance(ae, x_fit, torch.Generator().manual_seed(2))
        nll = diffusion_latent_nll(ldm.diffusion, ldm.denoiser, ldm.normaliser, mc_timesteps=timesteps,
                                   generator=torch.Generator().manual_seed(1))
        parts = [vae_bound(ae, chunk, nll, var, generator=torch.Generator().manual_seed(3 + i))
                 for i, chunk in enumerate(x.split(250))]
    per_image = torch.cat([p["bpd"] for p in parts])
    to_bits = 1 / (x[0].numel() * math.log(2))
    return {"bpd": float(per_image.mean()), "bpd_se": float(per_image.std() / math.sqrt(len(per_image))),
            "examples": n, "decoder_variance": var,
            **{f"bpd_{k}": float(torch.cat([p[k] for p in parts]).mean()) * to_bits
               for k in ("reconstruction", "neg_entropy", "latent_prior")}}


def scores(args, run: Path) -> dict:
    """Bound, PSNR and every sample set's FD / precision / recall (/ class accuracy) per seed, cached in the run."""
    from latentdiff.evaluation import EvalOptions, evaluate_run

    cache = run / "joint_bench_scores.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = {"bound": bound(run, args.bound_examples, args.bound_timesteps), "seeds": args.seeds, "sets": {}}
    for seed in args.seeds:
        path = run / f"eval_joint_bench_seed{seed}.json"
        evaluate_run(EvalOptions(run=str(run), num=args.num, seed=seed, baselines="none", bound_examples=4,
                                 bound_timesteps=2, classifier_dir=str(args.classifier_dir),
                                 classifier_steps=args.classifier_steps, no_inception=True, out=str(path),
                                 no_progress=True))
        result = json.loads(path.read_text())
        out["psnr"] = result["reconstruction"]["psnr"]
        for name, s in result["samples"].items():
            if name == "data":
                continue
            row = out["sets"].setdefault(name, {"fd": [], "precision": [], "recall": [], "class_accuracy": []})
            for key in ("fd", "precision", "recall"):
                row[key].append(s[key])
            row["class_accuracy"].append((s.get("attribute_accuracy") or {}).get("joint"))
    write_json(cache, out)
    return out


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def row_of(point: str, extra: float, steps: int, cpu_s: float, s: dict) -> dict:
    """One table row; every FD also as a multiple of the same run's reconstructions' FD (its floor: joint training
    moves the autoencoder, so the floor moves with it)."""
    row = {"point": point, "extra_cpu_min": extra, "steps": steps, "cpu_min": round(cpu_s / 60, 2),
           "bpd": s["bound"]["bpd"], "bpd_se": s["bound"]["bpd_se"],
           **{k: s["bound"][k] for k in ("bpd_reconstruction", "bpd_neg_entropy", "bpd_latent_prior")},
           "psnr": s["psnr"]}
    floor = mean(s["sets"].get("reconstructions", {}).get("fd", []))
    row["fd_reconstructions"] = floor
    for name, v in s["sets"].items():
        if name == "reconstructions":
            continue
        row[f"fd_{name}"] = mean(v["fd"])
        row[f"fd_{name}_seeds"] = v["fd"]
        row[f"fd_{name}_vs_floor"] = mean(v["fd"]) / floor if floor else None
        row[f"precision_{name}"], row[f"recall_{name}"] = mean(v["precision"]), mean(v["recall"])
        if mean(v["class_accuracy"]) is not None and name != "ldm":
            row[f"class_accuracy_{name}"] = mean(v["class_accuracy"])
    return row


def finish_point(extra: float, share: float) -> str:
    return f"c'': +{extra:g} min, {share:.0%} joint then stage two"


def side_by_side(runs: list[Path], out: Path, n: int = 32) -> None:
    """Samples of runs from the same noise (seed 0), left to right, as one PNG."""
    import torch

    from latentdiff import LatentDiffusion
    from latentdiff.viz import image_grid, save_png

    grids = [image_grid(LatentDiffusion.from_run(run).sample(n, generator=torch.Generator().manual_seed(0)), nrow=8)
             for run in runs]
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    save_png(torch.cat([part for grid in grids for part in (grid, gap)][:-1], dim=2), out)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cache = args.out_dir / "latent_cache"
    # the latent cache is encoded once, before any (b) run and outside every budget: the start run paid for it
    stage_two_more(args.start, args.out_dir / "warm_cache", 1, cache)
    if args.steps:
        per_min = {"stage_two": args.steps[0], "joint_main": args.steps[1], "joint_other": args.steps[1]}
        steps = {k: {x: max(1, round(v * x)) for x in [*args.extra, args.other_extra]} for k, v in per_min.items()}
        finish = {x: {"autoencoder_steps": max(1, round(args.finish * per_min["joint_main"] * x)),
                      "steps": round(per_min["joint_main"] * x) + 1} for x in args.finish_extra}
        calibration = None
    else:
        calibration = calibrate(args, cache)
        steps = {k: {x: steps_for(60 * x, c) for x in [*args.extra, args.other_extra] if x}
                 for k, c in calibration.items() if k != "finish"}
        # (c''): the joint share's steps as (c) counts them, then the frozen steps the rest of the budget buys
        finish = {}
        for x in args.finish_extra:
            n_joint = steps_for(60 * args.finish * x, calibration["joint_main"])
            frozen_s = 60 * (1 - args.finish) * x
            finish[x] = {"autoencoder_steps": n_joint,
                         "steps": n_joint + math.floor(frozen_s / calibration["finish"]["per_step_s"])}
    if finish:
        steps["finish"] = finish
    print(f"steps per point: {json.dumps(steps)}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = {("b", x): pool.submit(stage_two_more, args.start, args.out_dir / f"stage_two_{x:g}min",
                                      steps["stage_two"][x], cache) for x in args.extra}
        jobs["c"] = pool.submit(joint, args.start, args.out_dir / f"joint_{args.objectives['joint_main']}",
                                [steps["joint_main"][x] for x in args.extra], args.objectives["joint_main"],
                                args.joint_overrides)
        if args.other_extra:
            jobs["c_other"] = pool.submit(joint, args.start, args.out_dir / f"joint_{args.objectives['joint_other']}",
                                          [steps["joint_other"][args.other_extra]], args.objectives["joint_other"],
                                          args.joint_overrides)
        for x, f in finish.items():
            folder = args.out_dir / f"joint_finish{args.finish:g}_{x:g}min"
            jobs[("c_finish", x)] = pool.submit(joint, args.start, folder, [f["steps"]], args.objectives["joint_main"],
                                                [*args.joint_overrides,
                                                 f"joint.autoencoder_steps={f['autoencoder_steps']}"])
    runs = [("a: two-stage run", 0.0, 0, 0.0, args.start)]
    for x in args.extra:
        b = jobs[("b", x)].result()
        runs.append((f"b: +{x:g} min stage two", x, b["steps"], b["cpu_s"], Path(b["run"])))
    for x, c in zip(args.extra, jobs["c"].result()):
        runs.append((f"c: +{x:g} min joint ({args.objectives['joint_main']})", x, c["steps"], c["cpu_s"],
                     Path(c["run"])))
    if args.other_extra:
        c = jobs["c_other"].result()[-1]
        runs.append((f"c': +{args.other_extra:g} min joint ({args.objectives['joint_other']})", args.other_extra,
                     c["steps"], c["cpu_s"], Path(c["run"])))
    for x in finish:
        c = jobs[("c_finish", x)].result()[-1]
        runs.append((finish_point(x, args.finish), x, c["steps"], c["cpu_s"], Path(c["run"])))
    rows = [row_of(point, x, n, cpu, scores(args, run)) for point, x, n, cpu, run in runs]
    largest = max(args.extra)
    by_point = {r["point"]: r for r in rows}
    b_top = by_point[f"b: +{largest:g} min stage two"]
    c_top = by_point[f"c: +{largest:g} min joint ({args.objectives['joint_main']})"]
    name = f"joint_training_{args.start.name}" + ("_quick" if args.quick else "")
    picture = results_path(name).with_suffix(".png")
    side_by_side([Path(jobs[("b", largest)].result()["run"]), Path(jobs["c"].result()[-1]["run"]),
                  *([Path(jobs[("c_finish", largest)].result()[-1]["run"])] if largest in finish else [])], picture)
    fd_sets = [k for k in rows[0] if k.startswith("fd_") and not k.endswith(("_seeds", "_vs_floor"))]
    columns = ["point", "cpu_min", "steps", "bpd", "bpd_se", "bpd_neg_entropy", "psnr", *fd_sets,
               *[k for k in rows[0] if k.startswith(("recall_", "class_accuracy_"))]]
    write_results(name, rows, columns, extra={
        "start": str(args.start), "calibration": calibration, "steps": steps, "picture": str(picture),
        "bound_ratio_c_over_b": c_top["bpd"] / b_top["bpd"],
        **({"bound_ratio_finish_over_b": by_point[finish_point(largest, args.finish)]["bpd"] / b_top["bpd"]}
           if largest in finish else {}),
        "settings": {"finish": args.finish, "seeds": args.seeds, "num": args.num, "bound_examples": args.bound_examples,
                     "bound_timesteps": args.bound_timesteps, "joint_recipe": str(JOINT_RECIPE)}})


if __name__ == "__main__":
    main()
