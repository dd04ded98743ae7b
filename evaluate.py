#!/usr/bin/env python
"""Metrics of a trained run.

Its body is ``latentdiff/commands/evaluate.py``, installed as ``latentdiff-evaluate``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.evaluate import main  # noqa: E402

if __name__ == "__main__":
    main()
