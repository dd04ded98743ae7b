"""Checkpoint files: written atomically, read without running code, one line when anything is wrong.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, written to a temporary file,
fsynced and renamed (a kill at any moment leaves the old file or the new one, never half of one) and read
with ``torch.load(..., weights_only=True)``. ``healthy.pt`` (``HEALTHY``) is the newest ``last.pt`` the
training loop confirmed healthy (see ``latentdiff.training``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

CHECKPOINT_FORMAT = 1
HEALTHY = "healthy.pt"  # the newest last.pt confirmed healthy by the step after it (see Trainer._check_health)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit, phrased as one line."""





def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``.

    A crash (even ``kill -9``) at any moment leaves either the old file or the new one, never half of
    one. A full disk raises a one-line CheckpointError and leaves the previous checkpoint intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut, not only a killed process
    except (OSError, RuntimeError) as e:  # torch.save's zip writer reports a full disk as a RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
                  if str(e).strip() else type(e).__name__)
        raise CheckpointError(f"could not write checkpoint {path}: {reason} ({free_space(path.parent)}); "
                              f"the previous checkpoint is untouched") from None


def free_space(folder: str | Path) -> str:
    """``"12.3 GB free on /runs"``, or why that cannot be told; for one-line messages about full disks."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 1e9:.3g} GB free on {folder}"
    except OSError as e:
        return f"free space on {folder} unknown: {e.strerror or e}"


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a hidden ``.<name>.tmp<pid>`` beside it, then a rename, so a reader
    or a kill sees the old file or the new one, never half of one (``remove_stale_temporaries`` clears what a kill
    left). For small text files (configs, JSON records); checkpoints go through ``save_checkpoint``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no temporary behind


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete ``.<name>.tmp<pid>`` files a killed ``save_checkpoint`` left behind. Returns how many."""
    stale = list(Path(folder).glob(".*.tmp*")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True`` (never runs code from the file); corrupt files are one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, bit rot: all one message
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a latentdiff checkpoint "
                              f"({first}); delete it or point to another one") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a latentdiff checkpoint (no 'model' entry)")
    return state
