#!/usr/bin/env python
"""Train a noise-conditional attribute classifier p(a | x_t, t) on the latents of a diffusion run.

    python train_classifier.py --run runs/shapes_ldm_uncond                    # -> runs/shapes_ldm_uncond/classifier
    python train_classifier.py --run runs/shapes_ldm_uncond train.steps=500 model.width=32
    python sample.py --run runs/shapes_ldm_uncond --classifier --classifier-scale 3 --attr color=red

The run's latent caches (built by train_diffusion.py, rebuilt if missing) are noised with the run's own
schedule and normaliser, so the classifier lives in exactly the space the denoiser samples in; its
gradient then guides an unconditional run towards asked attributes (Dhariwal & Nichol 2021, §4).
TensorBoard (<run>/classifier/tb) shows the held-out accuracy of every attribute per quarter of t.
The training itself is ``latentdiff.stages.train_latent_classifier``.
"""

import sys
from pathlib import Path

from latentdiff.cli import finish_training, parse_cli, user_errors
from latentdiff.config import ClassifierRunConfig
from latentdiff.stages import train_latent_classifier


def main(argv=None):
    def extra(parser):
        parser.add_argument("--run", required=True, help="a train_diffusion.py run folder")

    cfg, args = parse_cli(ClassifierRunConfig, argv, description=__doc__, extra_args=extra)
    with user_errors():
        return finish_training(train_latent_classifier(cfg, args.run, args.resume, overwrite=args.overwrite,
                                                       argv=[Path(__file__).name, *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    main()
