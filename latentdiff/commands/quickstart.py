#!/usr/bin/env python
"""The main job on the embedded default (the synthetic `shapes` dataset), start to finish:

1. train the stage-one VAE            (configs/shapes/ae_kl.yaml, QUICK_AE_STEPS steps)
2. train the attribute-conditional latent diffusion on its codes (configs/shapes/ldm_kl.yaml, QUICK_LDM_STEPS)
3. sample a grid with one row per colour, all triangles, with classifier-free guidance

Both stages are bound by their steps, not by the recipes' wall-clock caps (``train.max_minutes``), so the
result is the same on a fast and on a busy machine; the step counts are sized to take about 10 minutes on
2 CPU cores (``python bench/quickstart.py`` measures the time and the grid's attribute accuracy). The full
recipes train longer: ``python train_ae.py --config configs/shapes/ae_kl.yaml`` and so on.

Rerunning continues or reuses what is already trained. ``--tiny`` runs a few steps of each stage
(a smoke test); ``--out-dir`` puts the runs elsewhere; ``--dry-run`` prints the commands without running them.
"""

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import latentdiff

QUICK_AE_STEPS = 1200   # of the recipe's 3000: the VAE's reconstructions are sharp by then on shapes
QUICK_LDM_STEPS = 2400  # of the recipe's 4000
# null is "no time budget" (TrainConfig.max_minutes): each stage stops at its steps and nowhere else
STEP_BOUND = ["train.max_minutes=null"]
TINY_COMMON = ["train.steps=20", "data.train_size=512", "data.test_size=128", "train.eval_every=10",
               "train.image_every=10"]


def grid_path(out: Path) -> Path:
    """Where the quick start's sample grid goes (its .npz beside it: images and the attributes asked for)."""
    return out / "shapes_ldm_kl" / "samples" / "triangles_by_color.png"


def commands(out: Path, tiny: bool) -> list[list[str]]:
    """The three commands the quick start runs (root script and arguments), in order."""
    if tiny:
        ae = [*TINY_COMMON, "eval_samples=64"]
        ldm = [*TINY_COMMON, "bound_examples=32", "bound_every=10", "sample.num=12", "sample.steps=5"]
    else:
        ae, ldm = [f"train.steps={QUICK_AE_STEPS}"], [f"train.steps={QUICK_LDM_STEPS}"]
    grid = grid_path(out)
    return [
        ["train_ae.py", "--config", "shapes/ae_kl", f"out_dir={out}", *ae, *STEP_BOUND],
        ["train_diffusion.py", "--config", "shapes/ldm_kl", f"out_dir={out}",
         f"ae.run={out / 'shapes_ae_kl'}", *ldm, *STEP_BOUND],
        ["sample.py", "--run", str(out / "shapes_ldm_kl"), "--grid-by", "color", "--attr", "shape=triangle",
         "--num", "48", "--guidance", "3", *(["--steps", "5"] if tiny else []),  # else the recipe's sampler
         "--out", str(grid), "--npz", str(grid.with_suffix(".npz")), "--no-progress"],
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--tiny", action="store_true", help="a few steps per stage, to check the pipeline runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    # each command in its own process, as python -m latentdiff.commands.<name>, whether installed or not
    here = str(Path(latentdiff.__file__).resolve().parents[1])  # the folder that holds the package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH"))))}
    for script, *rest in commands(out, args.tiny):
        cmd = [sys.executable, "-m", f"latentdiff.commands.{Path(script).stem}", *rest]
        print("\n$ " + shlex.join(["python", script, *rest]), flush=True)
        if not args.dry_run and (status := subprocess.run(cmd, env=env).returncode) != 0:
            sys.exit(status)
    if not args.dry_run:
        print(f"\nsample grid (one row per colour, all triangles): {grid_path(out)}")
        print(f"TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    main()
