#!/usr/bin/env python
"""Export a trained run as a pickle-free folder: config.json + safetensors weights, to hand to someone else.

    python export.py --run runs/shapes_ldm_kl --out exported/shapes_ldm_kl     # stage two (with its autoencoder)
    python export.py --run runs/shapes_ae_kl --out exported/shapes_ae_kl       # stage one alone
    python export.py --run exported/old --out exported/old_sealed              # an export from before manifests

A stage-two export loads with ``LatentDiffusion.from_pretrained(DIR)`` and works wherever a run folder does
(``sample.py --run DIR``, ``evaluate.py --run DIR``, ``visualize.py ... --run DIR``); a stage-one export with
``Autoencoder.from_pretrained(DIR)``. The weights are the EMA ones unless --no-ema. Loading an export never
unpickles anything (safetensors + JSON), so a downloaded model cannot run code. Its ``manifest.json`` holds the
sha256 of every file, checked at every load; an edited bundle is sealed again only by exporting it again.

The folder appears all at once (written beside it, then renamed): a failed export leaves nothing. Exporting a
run that is still training works (it takes the latest checkpoint) and says so; the step exported is printed.
"""

import argparse
import sys
from pathlib import Path

from autoencoders.models import Autoencoder
from latentdiff.bundle import bundle_kind, is_bundle
from latentdiff.checkpoints import load_checkpoint
from latentdiff.cli import user_errors
from latentdiff.loading import (
    autoencoder_checkpoint,
    autoencoder_from_checkpoint,
    ldm_parts_from_checkpoint,
    run_checkpoint,
)
from latentdiff.pipeline import LatentDiffusion
from latentdiff.run_folder import LOCK_NAME, training_process


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train_diffusion.py or train_ae.py run folder (or an export)")
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
        if is_bundle(run):  # an earlier export, e.g. one from before manifests: checked (or noted), sealed anew
            if bundle_kind(run) == "autoencoder":
                Autoencoder.from_pretrained(run).save_pretrained(out)
                print(f"wrote {out} (autoencoder from the export {run}); load with "
                      f"Autoencoder.from_pretrained({str(out)!r})")
            else:
                LatentDiffusion.from_pretrained(run).save_pretrained(out)
                print(f"wrote {out} (latent diffusion from the export {run}); load with "
                      f"LatentDiffusion.from_pretrained({str(out)!r}) or python sample.py --run {out}")
            return
        path = run_checkpoint(run, args.checkpoint or "last")
        state = load_checkpoint(path)  # read once: a run still training may replace it meanwhile
        if "sample_shape" in state.get("task", {}):
            path = autoencoder_checkpoint(run, args.checkpoint or "best")
            state = load_checkpoint(path)
            autoencoder_from_checkpoint(state, use_ema=not args.no_ema, what=str(path)).save_pretrained(out)
            what, load = "autoencoder", f"Autoencoder.from_pretrained({str(out)!r})"
        else:
            LatentDiffusion(**ldm_parts_from_checkpoint(state, run, use_ema=not args.no_ema)).save_pretrained(out)
            what = "latent diffusion"
            load = f"LatentDiffusion.from_pretrained({str(out)!r}) or python sample.py --run {out}"
        step = state.get("step")
        print(f"wrote {out} ({what} at step {step}, from {path}); load with {load}")
        holder = training_process(run)
        if holder is not None:
            print(f"note: {run} is still training ({holder} holds {run / LOCK_NAME}): exported step {step}, its "
                  f"latest checkpoint; export again later for a later one", file=sys.stderr)


if __name__ == "__main__":
    main()
