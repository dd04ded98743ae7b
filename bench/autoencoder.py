#!/usr/bin/env python
"""Stage-one quality of a recipe: train it as train_ae.py would, report test MSE/PSNR/SSIM and the time it took.

    python bench/autoencoder.py --config configs/shapes/ae_kl.yaml
    OMP_NUM_THREADS=1 python bench/autoencoder.py --config configs/fashion_mnist/ae_kl.yaml --minutes 14

The run is the recipe's own (its train.steps, its run folder ``<out_dir>/<name>``, e.g.
runs/fashion_mnist_ae_kl, which the matching ldm_*.yaml recipe's ``ae.run`` names), so the README's next
command trains stage two on it. ``--minutes`` only caps the wall-clock time (default: the recipe's own
train.max_minutes); dotted overrides work as on train_ae.py. The run must be fresh: a benchmark times a whole
run, so an existing run folder is refused (delete it or pass name=...). PSNR is the mean over test images of
each image's PSNR (``latentdiff.metrics.image.psnr``), as train_ae.py logs it.

Targets (issue "Stage one"): shapes ≥ 32 dB in 5 min; Fashion-MNIST RAE ≥ 28 dB, VAE ≥ 27 dB in 15 min,
against the reference of a lean ~0.7 M-parameter plain-conv autoencoder that reaches ~28 dB in 8 min here.
"""

import argparse
import sys
from pathlib import Path

from common import ROOT, write_results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap (train.max_minutes); default: the recipe's own; steps come from the recipe")
    p.add_argument("--out-dir", default=None, help="parent of the run folder (default: the recipe's out_dir, runs)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from latentdiff.cli import exit_with_error
    from latentdiff.config import AERunConfig, ConfigError, load_config
    from latentdiff.stages import train_autoencoder

    overrides = list(args.overrides)
    if args.out_dir is not None:
        overrides.append(f"out_dir={args.out_dir}")
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    try:
        cfg = load_config(AERunConfig, args.config, overrides)
    except ConfigError as e:
        exit_with_error(e)
    run_dir = Path(cfg.out_dir) / cfg.name
    if (run_dir / "checkpoints" / "last.pt").exists():
        exit_with_error(f"{run_dir} already holds a run; the benchmark times a fresh one: delete the folder "
                        f"or pass name=...")
    trainer = train_autoencoder(cfg, argv=["train_ae.py", "--config", args.config, *overrides])
    m = trainer.last_metrics
    params = sum(q.numel() for q in trainer.task.model.parameters())
    images = trainer.step * trainer.cfg.batch_size * trainer.cfg.grad_accum
    row = {"recipe": args.config, "params_M": params / 1e6, "steps": trainer.step,
           "minutes": trainer.train_seconds / 60, "train_img_per_s": images / trainer.train_seconds,
           "test_mse": m.get("mse"), "test_psnr_db": m.get("psnr"), "test_ssim": m.get("ssim")}
    write_results(f"autoencoder_{Path(args.config).parent.name}_{Path(args.config).stem}", [row], list(row),
                  extra={"run": str(run_dir), "stop_reason": trainer.stop_reason,
                         "psnr": "mean over test images of per-image PSNR"})


if __name__ == "__main__":
    main()
