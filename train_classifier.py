#!/usr/bin/env python
"""Train the noise-conditional latent attribute classifier of a diffusion run.

Its body is ``latentdiff/commands/train_classifier.py``, installed as ``latentdiff-train-classifier``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.train_classifier import main  # noqa: E402

if __name__ == "__main__":
    main()
