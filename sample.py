#!/usr/bin/env python
"""Sample, edit or inpaint with a trained run.

Its body is ``latentdiff/commands/sample.py``, installed as ``latentdiff-sample``.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from any folder without installing

from latentdiff.commands.sample import main  # noqa: E402

if __name__ == "__main__":
    main()
