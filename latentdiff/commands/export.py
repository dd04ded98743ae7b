#!/usr/bin/env python
"""Export a trained run as a pickle-free folder: config.json + safetensors weights, to hand to someone else.

    python export.py --run runs/shapes_ldm_kl --out exported/shapes_ldm_kl     # stage two (with its autoencoder)
    python export.py --run runs/shapes_ae_kl --out exported/shapes_ae_kl       # stage one alone

A stage-two export loads with ``LatentDiffusion.from_pretrained(DIR)`` and works wherever a run folder does
(``sample.py --run DIR``, ``evaluate.py --run DIR``, ``visualize.py ... --run DIR``); a stage-one export with
``Autoencoder.from_pretrained(DIR)``. The weights are the EMA ones unless --no-ema. Loading an export never
unpickles anything (safetensors + JSON), so a downloaded model cannot run code.
"""

import argparse
from pathlib import Path

from latentdiff.checkpoints import load_checkpoint  # noqa: E402
from latentdiff.cli import user_errors  # noqa: E402
from latentdiff.loading import autoencoder_checkpoint, load_autoencoder, run_checkpoint  # noqa: E402
from latentdiff.pipeline import LatentDiffusion  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train_diffusion.py or train_ae.py run folder")
    p.add_argument("--out", required=True, help="the folder to write (created; must not be a run folder)")
    p.add_argument("--checkpoint", choices=["best", "last"], default=None,
                   help="default: last for a diffusion run (as sample.py), best for an autoencoder run")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with user_errors():
        run, out = Path(args.run), Path(args.out)
        if out.resolve() == run.resolve():
            raise ValueError(f"--out {out}: export into a new folder, not into the run itself")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"--out {out}: exists and is not an empty folder; give a new folder")
        path = run_checkpoint(run, args.checkpoint or "last")
        stage_one = "sample_shape" in load_checkpoint(path).get("task", {})
        if stage_one:
            path = autoencoder_checkpoint(run, args.checkpoint or "best")
            load_autoencoder(path, use_ema=not args.no_ema).save_pretrained(out)
            print(f"wrote {out} (autoencoder from {path}); load with Autoencoder.from_pretrained({str(out)!r})")
            return
        ldm = LatentDiffusion.from_run(run, checkpoint=args.checkpoint or "last", use_ema=not args.no_ema)
        ldm.save_pretrained(out)
        print(f"wrote {out} (latent diffusion from {path}); load with LatentDiffusion.from_pretrained({str(out)!r}) "
              f"or python sample.py --run {out}")


if __name__ == "__main__":
    main()
