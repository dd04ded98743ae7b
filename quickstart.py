#!/usr/bin/env python
"""Both stages on the shapes dataset, then a guided sample grid.

Its body is ``latentdiff/commands/quickstart.py``, installed as ``latentdiff-quickstart``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.quickstart import main  # noqa: E402

if __name__ == "__main__":
    main()
