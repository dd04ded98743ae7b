#!/usr/bin/env python
"""Both stages on the shapes dataset, then a guided sample grid.

Its body is ``latentdiff/commands/quickstart.py``, installed as ``latentdiff-quickstart``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

# the names tests/ read from this script, besides main
from latentdiff.commands.quickstart import QUICK_AE_STEPS, QUICK_LDM_STEPS, commands, grid_path, main  # noqa: E402, F401

if __name__ == "__main__":
    main()
