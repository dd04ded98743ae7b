#!/usr/bin/env python
"""The main job on the embedded default (the synthetic `shapes` dataset), start to finish:

1. train the stage-one VAE            (configs/shapes/ae_kl.yaml)
2. train the attribute-conditional latent diffusion on its codes (configs/shapes/ldm_kl.yaml)
3. sample a grid with one row per colour, all triangles, with classifier-free guidance

Rerunning continues or reuses what is already trained. ``--tiny`` runs a few steps of each stage
(a smoke test); ``--out-dir`` puts the runs elsewhere.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import latentdiff


def run(command: str, *args: str) -> None:
    """One command in its own process, as ``python -m latentdiff.commands.<command>`` (installed or not)."""
    cmd = [sys.executable, "-m", f"latentdiff.commands.{command}", *args]
    here = str(Path(latentdiff.__file__).resolve().parents[1])  # the folder that holds the package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH"))))}
    print("\n$ python " + " ".join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        sys.exit(result.returncode)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--tiny", action="store_true", help="a few steps per stage, to check the pipeline runs")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    # --tiny runs are bound by their steps alone (max_minutes null): a busy machine must not cut them short
    tiny_ae = ["train.steps=20", "train.max_minutes=null", "data.train_size=512", "data.test_size=128",
               "eval_samples=64", "train.eval_every=10", "train.image_every=10"] if args.tiny else []
    tiny_ldm = ["train.steps=20", "train.max_minutes=null", "data.train_size=512", "data.test_size=128",
                "bound_examples=32",
                "train.eval_every=10", "train.image_every=10", "bound_every=10", "sample.num=12",
                "sample.steps=5"] if args.tiny else []
    run("train_ae", "--config", "shapes/ae_kl", f"out_dir={out}", *tiny_ae)
    run("train_diffusion", "--config", "shapes/ldm_kl", f"out_dir={out}",
        f"ae.run={out / 'shapes_ae_kl'}", *tiny_ldm)
    grid = out / "shapes_ldm_kl" / "samples" / "triangles_by_color.png"
    run("sample", "--run", str(out / "shapes_ldm_kl"), "--grid-by", "color", "--attr", "shape=triangle",
        "--num", "48", "--guidance", "3", *(["--steps", "5"] if args.tiny else []),  # else the recipe's sampler
        "--out", str(grid), "--npz", str(grid.with_suffix(".npz")), "--no-progress")
    print(f"\nsample grid (one row per colour, all triangles): {grid}")
    print(f"TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    main()
