"""Shared helpers for bench/ scripts: markdown tables, JSON results with where and how they were made.

Every result file carries its provenance (``provenance()``: date, machine, torch version, git commit and the
exact command), so a figure in the docs (README, docs/results.md) can be traced to the run that produced it and
reproduced.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: the records are written without a lock (one bench at a time there)
    fcntl = None

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


def relative_to_checkout(value, root: Path = ROOT):
    """``value`` (a JSON-able dict, list or string, walked through) with every absolute path under the checkout
    ``root`` written relative to it: ``<root>/runs/a`` -> ``runs/a``, ``ae.run=<root>/runs/a`` -> ``ae.run=runs/a``,
    ``<root>`` alone -> ``.``. A committed record then names no machine's folders; bench scripts that read a path
    back resolve it against ROOT. Paths outside the checkout are left as they are."""
    if isinstance(value, dict):
        return {k: relative_to_checkout(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_to_checkout(v, root) for v in value]
    if not isinstance(value, str):
        return value
    # the checkout's path where it starts a path (not inside a longer one) and ends at "/" or the path's end
    under = re.compile(r"(?<![\w./-])" + re.escape(str(root)) + r"(/|(?![\w.-]))")
    return under.sub(lambda m: "" if m.group(1) == "/" else ".", value)


@contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path``'s folder while a record there is read, changed and written back.

    The docs' commands run two benches at once (one per core) that add rows to the same JSON (the budget curve's,
    its calibration); without the lock the later writer, having read the file before the earlier one wrote it,
    drops the earlier one's rows. ``flock`` on the folder itself: no lock file is left behind, and the kernel drops
    the lock when its holder dies. Not reentrant: a block holding it must not enter another for the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the flock


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically (``latentdiff.checkpoints.write_text_atomic``): a reader, or a bench
    killed mid-write, sees the old file or the new one, never half of one."""
    from latentdiff.checkpoints import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1))


def write_results(name: str, rows: list[dict], columns: list[str], extra: dict | None = None) -> Path:
    """Print the table and write bench/results/<name>.json with its ``provenance()`` (the folder can be moved
    with LATENTDIFF_BENCH_RESULTS, as the smoke tests do, so they never touch the committed results); every
    path under the checkout is written relative to it (``relative_to_checkout``)."""
    meta = provenance()
    print(f"\n{name} — {meta['date']} — {meta['machine']} — {meta['git_commit'][:12]}\n")
    print(markdown_table(rows, columns))
    out = results_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, relative_to_checkout({**meta, "rows": rows, **(extra or {})}))
    print(f"\nwrote {out}")
    return out
