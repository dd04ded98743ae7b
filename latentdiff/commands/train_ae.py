#!/usr/bin/env python
"""Stage one: train an autoencoder (VAE, RAE or plain AE) on images.

    python train_ae.py --config configs/shapes/ae_kl.yaml [train.steps=2000 name=my_ae ...]

Writes runs/<name>/: config.yaml, checkpoints/{last,best}.pt, TensorBoard events (tb/).
Rerunning into the same run folder continues it; under torchrun each process takes a share.
The training itself is ``latentdiff.stages.train_autoencoder``.
"""

import sys
from pathlib import Path

from latentdiff.cli import finish_training, parse_cli, user_errors
from latentdiff.config import AERunConfig
from latentdiff.stages import train_autoencoder


def main(argv=None):
    cfg, args = parse_cli(AERunConfig, argv, description=__doc__)
    with user_errors():
        return finish_training(train_autoencoder(cfg, args.resume, argv=[Path(__file__).name, *(argv or sys.argv[1:])],
                                                 overwrite=args.overwrite))


if __name__ == "__main__":
    main()
