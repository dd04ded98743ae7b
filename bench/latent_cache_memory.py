#!/usr/bin/env python
"""Peak resident memory while training reads a latent cache, as the cached dataset grows.

    python bench/latent_cache_memory.py                      # 10k, 200k, 1M and 4M latents (4 GiB)
    python bench/latent_cache_memory.py --sizes 10000 5000000 --batches 400

For each size N a synthetic cache of N latents of shape 4×8×8 (float32, 1 KiB each, the layout
``build_latent_cache`` writes for a deterministic autoencoder) goes into a temporary folder. Then,
for each way of opening it, a fresh process reads a fixed number of shuffled batches through the
training loop's ``BatchStream``, exactly as ``train_diffusion.py`` does, and reports from
/proc/self/status:

    peak_rss   VmHWM, the high-water mark of resident memory (anonymous + file-backed)
    anon       the largest RssAnon seen: memory the process owns (heap, tensors, index permutations)
    file       RssFile at the end: cache pages mapped in, which are page cache the kernel may drop

``pread`` is ``LatentCache`` as training uses it (rows read with os.pread by ``NpyRows``); ``mmap``
opens the same arrays with np.load(mmap_mode="r") and ``ram`` with a plain np.load, for comparison.
Everything is in MiB above the process's memory after its imports (``base_MiB``), so the columns
show what the cache costs.

Reading the figures: ``anon`` is the memory a run owns; it stays flat for pread and mmap (the
shuffled index permutation, 8 bytes per latent, is all that grows with N). ``file`` counts cache
pages mapped into the process: with mmap the kernel maps whole neighbourhoods of pages at each
fault, so it approaches the cache size and ``peak_rss`` (what ``ps`` or a scheduler sees) grows with
the dataset, even though those pages are clean and reclaimable; pread maps nothing, so its peak RSS
is flat. The largest sizes exceed what one would hold in RAM next to a model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_results  # noqa: E402

LATENT_SHAPE = (4, 8, 8)
MIB = 1 << 20


def proc_status() -> dict[str, float]:
    """VmHWM, RssAnon and RssFile of this process, in MiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024  # reported in kB
    return out


def write_cache(folder: Path, n: int, chunk: int = 1 << 16) -> None:
    """A cache of ``n`` standard-normal latents with one 6-valued attribute, written a chunk at a time."""
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    mean = np.lib.format.open_memmap(folder / "mean.npy", "w+", np.float32, (n, *LATENT_SHAPE))
    attrs = np.lib.format.open_memmap(folder / "attrs.npy", "w+", np.int64, (n, 1))
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        mean[i : i + k] = rng.standard_normal((k, *LATENT_SHAPE), dtype=np.float32)
        attrs[i : i + k] = rng.integers(0, 6, (k, 1))
    mean.flush()
    attrs.flush()
    del mean, attrs
    meta = {"format": 1, "stochastic": False, "n": n, "latent_shape": list(LATENT_SHAPE)}
    (folder / "meta.json").write_text(json.dumps(meta))


def measure(folder: Path, mode: str, batches: int, batch_size: int) -> dict:
    """Run in a fresh process: open the cache (``mmap`` or ``ram``), read ``batches`` shuffled batches."""
    import numpy as np

    from latentdiff.data_order import BatchStream
    from latentdiff.latents import LatentCache, sample_latents

    base = proc_status()
    cache = LatentCache(folder)  # mode "pread": as train_diffusion.py reads it
    if mode in ("mmap", "ram"):
        mmap_mode = "r" if mode == "mmap" else None  # ram: the whole array read into memory
        cache.mean = np.load(folder / "mean.npy", mmap_mode=mmap_mode)
        cache.attrs = np.load(folder / "attrs.npy", mmap_mode=mmap_mode)
    stream = BatchStream(cache, batch_size, seed=0)
    anon, checksum = 0.0, 0.0
    start = time.perf_counter()
    for _ in range(batches):
        mean, logvar, attrs = next(stream)
        checksum += float(sample_latents(mean, logvar).sum())  # use the data, as training would
        anon = max(anon, proc_status()["RssAnon"])
    seconds = time.perf_counter() - start
    end = proc_status()
    return {"peak_rss": end["VmHWM"] - base["VmHWM"], "anon": anon - base["RssAnon"],
            "file": end["RssFile"] - base["RssFile"], "base": base["VmHWM"],
            "batches_per_s": batches / seconds, "checksum": checksum}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000, 1_000_000, 4_000_000])
    p.add_argument("--batches", type=int, default=200, help="batches read per measurement")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dir", default=None, help="where to write the caches (default: a temporary folder)")
    p.add_argument("--measure", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)  # the child
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args.batches, args.batch_size)))
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"cache_{n}"
            write_cache(folder, n)
            size_mib = (folder / "mean.npy").stat().st_size / MIB
            row = {"latents": n, "cache_MiB": size_mib}
            for mode in ("pread", "mmap", "ram"):
                out = subprocess.run([sys.executable, __file__, "--measure", str(folder), mode,
                                      "--batches", str(args.batches), "--batch-size", str(args.batch_size)],
                                     capture_output=True, text=True, check=True, cwd=ROOT)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                for k in ("peak_rss", "anon", "file", "batches_per_s"):
                    row[f"{mode}_{k}"] = r[k]
                row["base_MiB"] = r["base"]
            row["mmap/pread peak_rss"] = row["mmap_peak_rss"] / max(row["pread_peak_rss"], 1e-9)
            rows.append(row)
            print(json.dumps(row), flush=True)
    columns = ["latents", "cache_MiB", "pread_peak_rss", "pread_anon", "pread_file", "mmap_peak_rss", "mmap_file",
               "mmap/pread peak_rss", "ram_peak_rss", "pread_batches_per_s", "mmap_batches_per_s", "ram_batches_per_s"]
    write_results("latent_cache_memory", rows, columns,
                  extra={"batches": args.batches, "batch_size": args.batch_size, "latent_shape": LATENT_SHAPE,
                         "units": "MiB above the process's resident memory after imports (base_MiB)"})


if __name__ == "__main__":
    main()
