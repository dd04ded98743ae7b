#!/usr/bin/env python
"""Joint training: fine-tune a trained two-stage VAE run end to end, the encoder learning for its diffusion prior.

    python train_joint.py --config configs/fashion_mnist/joint_kl.yaml start.run=runs/fashion_mnist_ldm_kl

Starts from the stage-two run ``start.run`` (its EMA weights and its autoencoder copy: LSGM's warm start) and
trains encoder, decoder and latent denoiser together on the two-stage bound
−ELBO(x) = E_q[−log p(x|z)] − H[q(z|x)] + CE(q(z|x) ‖ p_θ(z)) in bits/dim (Vahdat et al. 2021; docs/math.md,
"Joint training"). The run folder is a stage-two run like any other: sample.py, evaluate.py, export.py and
``LatentDiffusion.from_run`` read it. A deterministic autoencoder (RAE) has no bound and is refused.
The training itself is ``latentdiff.stages.train_joint``.
"""

import sys
from pathlib import Path

from latentdiff.cli import finish_training, parse_cli, user_errors
from latentdiff.config import JointRunConfig
from latentdiff.stages import train_joint


def main(argv=None):
    cfg, args = parse_cli(JointRunConfig, argv, description=__doc__)
    with user_errors():
        return finish_training(train_joint(cfg, args.resume, overwrite=args.overwrite,
                                           argv=[Path(__file__).name, *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    main()
