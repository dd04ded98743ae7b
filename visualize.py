#!/usr/bin/env python
"""Pictures of a trained run.

Its body is ``latentdiff/commands/visualize.py``, installed as ``latentdiff-visualize``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.visualize import main  # noqa: E402

if __name__ == "__main__":
    main()
