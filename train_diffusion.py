#!/usr/bin/env python
"""Stage two: train the latent diffusion.

Its body is ``latentdiff/commands/train_diffusion.py``, installed as ``latentdiff-train-diffusion``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.train_diffusion import main  # noqa: E402

if __name__ == "__main__":
    main()
