"""Shared helpers for bench/ scripts: markdown tables, JSON results with where and how they were made.

Every result file carries its provenance (``provenance()``: date, machine, torch version, git commit and the
exact command), so a README figure can be traced to the run that produced it and reproduced.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, {gpu}"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def git_commit() -> str:
    """HEAD of the checkout the bench ran from, with "+dirty" when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def provenance() -> dict:
    """Where and how a result was made: date, machine, torch version, git commit, the exact command."""
    import torch

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "torch": torch.__version__, "git_commit": git_commit(),
            "command": shlex.join(["python", *sys.argv])}


def results_path(name: str) -> Path:
    """bench/results/<name>.json, or under $LATENTDIFF_BENCH_RESULTS (the smoke tests' temporary folder)."""
    return Path(os.environ.get("LATENTDIFF_BENCH_RESULTS", ROOT / "bench" / "results")) / f"{name}.json"


def write_results(name: str, rows: list[dict], columns: list[str], extra: dict | None = None) -> Path:
    """Print the table and write bench/results/<name>.json with its ``provenance()`` (the folder can be moved
    with LATENTDIFF_BENCH_RESULTS, as the smoke tests do, so they never touch the committed results)."""
    meta = provenance()
    print(f"\n{name} — {meta['date']} — {meta['machine']} — {meta['git_commit'][:12]}\n")
    print(markdown_table(rows, columns))
    out = results_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": rows, **(extra or {})}, indent=1))
    print(f"\nwrote {out}")
    return out
