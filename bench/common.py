"""Shared helpers for bench/ scripts: markdown tables, JSON results with the machine they came from."""

from __future__ import annotations

import datetime
import json
import os
import platform
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


def write_results(name: str, rows: list[dict], columns: list[str], extra: dict | None = None) -> Path:
    """Print the table and write bench/results/<name>.json with the date and machine (the folder can be moved
    with LATENTDIFF_BENCH_RESULTS, as the smoke tests do, so they never touch the committed results)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{name} — {stamp} — {machine()}\n")
    print(markdown_table(rows, columns))
    out = Path(os.environ.get("LATENTDIFF_BENCH_RESULTS", ROOT / "bench" / "results")) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": stamp, "machine": machine(), "rows": rows, **(extra or {})}, indent=1))
    print(f"\nwrote {out}")
    return out
