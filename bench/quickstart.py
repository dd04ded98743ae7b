#!/usr/bin/env python
"""The quick start as a user gets it: its time on this machine and how well its grid follows the attributes.

    python bench/quickstart.py                 # a fresh quick start under runs/bench/quickstart (about 10 min)

Runs ``python quickstart.py --out-dir OUT`` (both stages bound by their steps, then the guided grid: one row per
colour, all triangles, sizes drawn from the data) with the machine's default threads, as a user runs it, and
times it (wall clock and the children's CPU time). Then the pixel-space judge that ``evaluate.py`` trains on the
dataset's real labels (``latentdiff.metrics.classifier``; cached in OUT/classifiers/, its training not timed)
judges the grid against what each image was asked for (the .npz beside the grid): accuracy per attribute and
joint (every attribute of an image right). Prints a table, writes bench/results/quickstart.json.
``--tiny`` is the smoke version the tests run.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402

GRID_LINE = "sample grid (one row per colour, all triangles): "


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/bench/quickstart")
    p.add_argument("--tiny", action="store_true", help="quickstart.py --tiny and a short judge: the smoke test")
    p.add_argument("--keep", action="store_true", help="reuse the runs already in --out-dir (else start afresh: "
                                                       "a timing of a resumed quick start means nothing)")
    args = p.parse_args()
    out = Path(args.out_dir)
    if out.exists() and not args.keep:
        shutil.rmtree(out)

    import numpy as np
    import torch

    from latentdiff.data.schema import AttributeSchema
    from latentdiff.metrics.classifier import attribute_accuracy, load_or_train_classifier

    cmd = [sys.executable, str(ROOT / "quickstart.py"), "--out-dir", str(out), *(["--tiny"] if args.tiny else [])]
    wall, cpu = time.perf_counter(), children_cpu_seconds()
    # the quick start's own output names its grid (a bench script does not import a command); shown as it runs
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    grid = None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith(GRID_LINE):
            grid = Path(line[len(GRID_LINE):].strip())
    if proc.wait() != 0 or grid is None:
        sys.exit(f"error: {' '.join(cmd)} failed" + ("" if grid else " to name its sample grid"))
    wall, cpu = time.perf_counter() - wall, children_cpu_seconds() - cpu

    steps = {}
    for run in ("shapes_ae_kl", "shapes_ldm_kl"):
        state = torch.load(out / run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True, mmap=True)
        steps[run] = int(state["step"])
        data_config = state["config"]["data"]
    npz = np.load(grid.with_suffix(".npz"))
    images, asked = torch.from_numpy(npz["images"]), torch.from_numpy(npz["attributes"]).long()
    judge, record, _ = load_or_train_classifier(data_config, out / "classifiers",
                                                **({"steps": 20} if args.tiny else {}))
    schema = AttributeSchema.from_dict(record["schema"])
    names = [str(n) for n in npz["attribute_names"]]
    assert names == list(schema.names), (names, schema.names)
    acc = attribute_accuracy(judge.judge(images)[1], asked, schema)
    row = {"ae steps": steps["shapes_ae_kl"], "ldm steps": steps["shapes_ldm_kl"], "n": len(images),
           "wall min": wall / 60, "cpu min": cpu / 60, "joint": acc["joint"],
           **{f"acc {n}": acc[n] for n in schema.names if n in acc}}
    write_results("quickstart" + ("_tiny" if args.tiny else ""), [row], list(row),
                  extra={"out_dir": str(out), "judge_test_accuracy": record["test_accuracy"]})


if __name__ == "__main__":
    main()
