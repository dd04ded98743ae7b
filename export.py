#!/usr/bin/env python
"""Export a run as a pickle-free folder.

Its body is ``latentdiff/commands/export.py``, installed as ``latentdiff-export``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.export import main  # noqa: E402

if __name__ == "__main__":
    main()
