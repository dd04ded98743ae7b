"""Run folders: which config a folder belongs to, what --overwrite clears, and the lock one process holds.

Re-running a command into its run folder continues the run when the config differs only in
``RESUMABLE_KEYS``; anything else, or a folder holding something of another run, is one clear line.
``RunLock`` (``<run>/.lock``: PID and host, ``flock``; stale locks of dead processes are taken over)
keeps a second process out of a folder in use.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from latentdiff.checkpoints import HEALTHY, write_text_atomic
from latentdiff.runtime import TrainingError, any_rank, is_main_process

# Keys that may change when a run is continued: they do not alter what has been trained so far
# (train.lr and train.grad_clip so that a run stopped by a NaN loss can go on more gently).
# train.guide_at: the Trainer refuses a change that would move a guide already taken (or one whose step is past)
RESUMABLE_KEYS = ("train.steps", "train.guide_at", "train.max_minutes", "train.lr", "train.grad_clip",
                  "train.stop_on_divergence",
                  "train.log_every",
                  "train.eval_every",
                  "train.image_every", "train.checkpoint_every", "train.device", "data.num_workers",
                  "data.root", "data.download", "latents.cache_dir", "latents.encode_batch_size",
                  "sample.", "bound_every", "bound_examples", "eval_samples", "ae.run", "out_dir")


# What a run writes into its folder; --overwrite removes these (and nothing else) before starting over.
RUN_OUTPUTS = ("checkpoints", "tb", "samples", "eval.json", "autoencoder")  # autoencoder: stage two's copy


def check_run_dir(run_dir: str | Path, config_dict: dict, resume: bool, overwrite: bool = False) -> bool:
    """Return True when ``run_dir`` holds an earlier run that this config continues.

    Re-running into a folder that holds ``checkpoints/last.pt`` continues that run, provided the config
    only differs in keys listed in RESUMABLE_KEYS (e.g. more ``train.steps``); anything else is one
    clear error, so a run folder always matches the config that trained it. A folder without last.pt
    that still holds something of a run (best.pt, healthy.pt, another config, files without a
    config.yaml) is refused too, since starting there would replace it; ``overwrite`` starts over anyway.
    """
    import yaml

    from latentdiff.config import ConfigError

    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    last = ckpts / "last.pt"
    if overwrite:
        if resume:
            raise ConfigError("--resume and --overwrite contradict each other: continue the run, or start it over")
        return False
    old_path = run_dir / "config.yaml"
    if old_path.exists():
        try:
            old = yaml.safe_load(old_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            raise ConfigError(f"{old_path} cannot be read ({type(e).__name__}); it is not this run's config: "
                              f"pick another name=..., or --overwrite to start over in that folder") from None
        a, b = flatten_config(old if isinstance(old, dict) else {}), flatten_config(config_dict)
        changed = [k for k in sorted(set(a) | set(b))
                   if a.get(k) != b.get(k) and not any(k == r or (r.endswith(".") and k.startswith(r))
                                                      for r in RESUMABLE_KEYS)]
        if changed:
            diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:4])
            raise ConfigError(f"{run_dir} already holds a run trained with other settings ({diffs}); "
                              f"pick another name=..., or --overwrite to replace that run")
    if last.exists():
        return True
    if resume:
        raise ConfigError(f"--resume: {last} does not exist, so there is nothing to continue")
    kept = sorted(p.name for p in ckpts.glob("*.pt")) if ckpts.is_dir() else []
    if kept:
        source = "best.pt" if "best.pt" in kept else HEALTHY if HEALTHY in kept else kept[0]
        raise ConfigError(f"{run_dir} holds {', '.join(kept)} but no last.pt, and starting here would replace "
                          f"them; to continue from {source}: cp {ckpts / source} {last} and rerun; to start over: "
                          f"--overwrite; or pick another name=...")
    if not old_path.exists() and run_dir.is_dir():
        other = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
        if other:
            raise ConfigError(f"{run_dir} is not empty ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}) "
                              f"and holds no run config; pick another name=... or out_dir=..., or --overwrite")
    return False


def unwritable(folder: str | Path) -> str | None:
    """Why this process cannot create ``folder`` or write into it (it need not exist yet), or None.

    The first folder on its path that exists decides: a file there, or no write permission for this process
    (``os.access``: the real user's permission bits, which root passes as the kernel lets it, and a filesystem
    mounted read-only, which stops root too).
    """
    p = Path(folder).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"{p} is a file, not a folder"
    if os.access(p, os.W_OK | os.X_OK):
        return None
    if hasattr(os, "statvfs") and os.statvfs(p).f_flag & os.ST_RDONLY:
        return f"{p} is on a read-only filesystem"
    return f"{p} is read-only for this user"


def preflight_run_dir(run_dir: str | Path, config_dict: dict, resume: bool, overwrite: bool = False) -> bool:
    """What is checked of ``run_dir`` before any work (reading data, encoding the latent cache): that it can be
    written, that no folder sits where its lock goes, and ``check_run_dir``. Returns whether an earlier run
    continues; ``train`` checks again under the lock."""
    from latentdiff.config import ConfigError

    problem = unwritable(run_dir)
    if problem:
        raise ConfigError(f"out_dir: cannot write the run folder {run_dir}: {problem}; pick a writable "
                          f"out_dir=... or make that folder writable")
    RunLock(run_dir).check_path()
    return check_run_dir(run_dir, config_dict, resume, overwrite)


def clear_run_outputs(run_dir: str | Path) -> None:
    """What ``--overwrite`` removes before starting over: the RUN_OUTPUTS of an earlier run, nothing else."""
    for name in RUN_OUTPUTS:
        p = Path(run_dir) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_run_config(run_dir: str | Path, config_dict: dict) -> None:
    """Rank 0 writes ``run_dir/config.yaml`` (atomically: a kill never leaves half a file)."""
    import yaml

    if dist.is_initialized():
        dist.barrier()  # every rank has read the old config.yaml before rank 0 replaces it
    if is_main_process():
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))


def prepare_run_dir(run_dir: str | Path, config_dict: dict, resume: bool, overwrite: bool = False) -> bool:
    """``check_run_dir`` then ``write_run_config``: True when an earlier run continues."""
    resuming = check_run_dir(run_dir, config_dict, resume, overwrite)
    write_run_config(run_dir, config_dict)
    return resuming




# ----------------------------------------------------------------------------- run folder lock


LOCK_NAME = ".lock"


class RunLock:
    """An exclusive lock on a run folder for the whole run: ``<run>/.lock`` holding "PID HOST".

    The lock itself is ``flock`` on that file, which the kernel drops when the holder dies (even by
    ``kill -9``), so a lock file whose process is gone is stale and is taken over, with a note. Where
    ``flock`` is missing the file's PID is checked instead (a dead PID on this host is stale; a lock of
    another host is never taken over). Released at exit.
    """

    def __init__(self, run_dir: str | Path):
        import socket

        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.me = f"{os.getpid()} {socket.gethostname()}"
        self.fd = None
        self.created_dir = False

    def _holder(self) -> tuple[int | None, str]:
        try:
            pid, _, host = self.path.read_text().strip().partition(" ")
            return int(pid), host
        except (OSError, ValueError):
            return None, "?"

    def _busy(self, pid, host) -> TrainingError:
        return TrainingError(f"run folder {self.run_dir} is in use by process {pid} on host {host} (lock file "
                             f"{self.path}); wait for it or stop it, or pick another name=...")

    def check_path(self) -> None:
        """One line when a folder sits where the lock file goes (the run would fail to open it)."""
        if self.path.is_dir():
            raise TrainingError(f"{self.path} is a folder, where the run folder's lock file goes; remove it "
                                f"(it is not part of a run) and rerun")

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows
            fcntl = None
        self.created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            self.check_path()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise self._busy(*self._holder()) from None
                    try:  # the file may have been removed and recreated by its holder meanwhile
                        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:
                        os.close(fd)
                        continue
                pid, host = self._holder()
                if pid is not None and f"{pid} {host}" != self.me:
                    if fcntl is None and not _stale(pid, host):
                        raise self._busy(pid, host)
                    print(f"note: taking over the stale lock {self.path} of process {pid} on {host}, "
                          f"which is no longer running", file=sys.stderr, flush=True)
                os.ftruncate(fd, 0)
                os.write(fd, f"{self.me}\n".encode())
                self.fd = fd
                return self
            except BaseException:
                if self.fd is None:
                    os.close(fd)
                raise
        raise TrainingError(f"could not lock run folder {self.run_dir}: {self.path} keeps changing")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if self.path.read_text().strip() == self.me:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # drops the flock
        self.fd = None
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only if nothing was written: a run refused before it began
            except OSError:
                pass


def training_process(run_dir: str | Path) -> str | None:
    """"process PID on HOST" when ``run_dir/.lock`` names a process that may still be running there, else None.

    Read only (the lock is never taken, so a training starting now is not disturbed); a lock file whose
    process is gone is stale (``RunLock``), one of another host cannot be told and counts as running.
    """
    pid, host = RunLock(run_dir)._holder()
    if pid is None or _stale(pid, host):
        return None
    return f"process {pid} on {host}"


def _stale(pid: int, host: str) -> bool:
    import socket

    if host != socket.gethostname():
        return False  # cannot tell from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lock_run_dir(run_dir: str | Path, device="cpu") -> RunLock | None:
    """Rank 0 locks ``run_dir``; under torchrun every rank fails together when it cannot (``device``: where
    the all-reduce runs, the ranks' own device, since NCCL reduces CUDA tensors only)."""
    lock, err = None, None
    if is_main_process():
        try:
            lock = RunLock(run_dir).acquire()
        except TrainingError as e:
            err = e
    if any_rank(err is not None, device):
        raise err or TrainingError(f"rank 0 could not lock run folder {run_dir}")
    return lock




def flatten_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
