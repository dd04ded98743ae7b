#!/usr/bin/env python
"""Write docs/config.md from the config dataclasses (``--check``: exit 1 when it is stale)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentdiff.config import reference_markdown  # noqa: E402

if __name__ == "__main__":
    target = ROOT / "docs" / "config.md"
    text = reference_markdown() + "\n"
    if "--check" in sys.argv[1:]:
        current = target.read_text() if target.exists() else ""
        sys.exit(0 if current == text else "docs/config.md is stale: run python docs/make_config_reference.py")
    target.write_text(text)
    print(f"wrote {target}")
