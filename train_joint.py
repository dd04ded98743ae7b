#!/usr/bin/env python
"""Joint training: encoder, decoder and latent prior fine-tuned together (LSGM).

Its body is ``latentdiff/commands/train_joint.py``, installed as ``latentdiff-train-joint``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.train_joint import main  # noqa: E402

if __name__ == "__main__":
    main()
