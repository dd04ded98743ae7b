#!/usr/bin/env python
"""Stage one: train an autoencoder.

Its body is ``latentdiff/commands/train_ae.py``, installed as ``latentdiff-train-ae``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.train_ae import main  # noqa: E402

if __name__ == "__main__":
    main()
