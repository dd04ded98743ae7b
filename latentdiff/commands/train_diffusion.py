#!/usr/bin/env python
"""Stage two: train a DDPM (ε objective) on the latent codes of a trained autoencoder.

    python train_diffusion.py --config configs/shapes/ldm_kl.yaml ae.run=runs/shapes_ae_kl
    python train_diffusion.py --config configs/toy/swissroll.yaml        # ae.run: null, on 2-D points

The dataset is encoded once into a latent cache keyed by the autoencoder's hash and the data config;
training draws z from the cached posteriors, normalises it, and logs decoded EMA samples with fixed
noise (the same seeds each time) to TensorBoard and runs/<name>/samples/. The run folder also gets the
frozen autoencoder's weights (runs/<name>/autoencoder/), so the run samples without its stage-one run.
The training itself is ``latentdiff.stages.train_latent_diffusion``.
"""

import sys
from pathlib import Path

from latentdiff.cli import finish_training, parse_cli, user_errors
from latentdiff.config import LDMRunConfig
from latentdiff.stages import train_latent_diffusion


def main(argv=None):
    cfg, args = parse_cli(LDMRunConfig, argv, description=__doc__)
    with user_errors():
        return finish_training(train_latent_diffusion(cfg, args.resume, overwrite=args.overwrite,
                                                      argv=[Path(__file__).name, *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    main()
