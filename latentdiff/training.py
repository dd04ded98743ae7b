"""The one training loop both stages use.

A *task* says what to train; this module says how. A task provides

    task.model                       nn.Module: trained, EMA-tracked, saved as "model"
    task.extra_modules -> dict       other trained modules (e.g. a discriminator), saved by name
    task.losses(batch, step)         -> ({group: scalar or None}, {name: float}) for one micro-batch;
                                        backward of the sum must give each module only its own gradient
    task.evaluate(model, step)       -> {metric: float} on held-out data (optional)
    task.log_images(writer, model, step)   image grids for TensorBoard (optional)
    task.best_metric                 (name, "min" | "max") for best.pt (optional)
    task.state() / task.load_state(d)      extra plain state stored in checkpoints (optional)

and the loop does the rest: AdamW, warm-up then constant or cosine learning rate, gradient
accumulation and clipping, EMA of the weights, optional autocast and ``torch.compile``, a seeded
and resumable data order, atomic checkpoints that resume bit-exactly on the CPU, TensorBoard
scalars, a progress bar, SIGINT/SIGTERM handling and NaN detection.

Under ``torchrun`` every rank holds the whole model (same seed, same initial weights), reads its own
share of each global batch, and gradients are averaged across ranks, so N ranks with batch B step
exactly like one process with batch N*B. Ranks draw their noise from independent streams. Decisions
that must be unanimous (stop on a signal or the time budget, NaN, resume step) are all-reduced; only
rank 0 evaluates, logs and writes checkpoints. ``out_dir`` and the latent cache must be on a
filesystem every rank sees.
"""

from __future__ import annotations

import atexit
import copy
import math
import os
import shlex
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from latentdiff.config import TrainConfig

CHECKPOINT_FORMAT = 1
HEALTHY = "healthy.pt"  # the newest last.pt confirmed healthy by the step after it (see Trainer._check_health)


class TrainingError(RuntimeError):
    """A problem that stops training, phrased as one line for the user."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit, phrased as one line."""


# ----------------------------------------------------------------------------- devices and ranks


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU.

    Zero-initialised output layers make Adam's second moments and some activations subnormal early in
    training, and x86 CPUs handle subnormals tens of times slower: measured here, a swiss-roll MLP
    step went from 1.2 s to 0.03 s with this on. Values below 1e-38 do not matter to any result.
    """
    torch.set_flush_denormal(True)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then CPU. Under torchrun each rank takes its LOCAL_RANK's GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"train.device: {name!r} is not a device (use auto, cpu, cuda, cuda:1, mps)") from None
    check_device_present(device)
    return device


def check_device_present(device: torch.device) -> None:
    """One line when the asked accelerator is not on this machine (else loading a checkpoint onto it fails
    with a message that reads like a corrupt file)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise TrainingError(f"device {str(device)!r}: this machine has no CUDA device (torch.cuda.is_available() "
                                f"is False); use train.device=auto or cpu (--device auto|cpu for the other commands)")
        if device.index is not None and device.index >= count:
            raise TrainingError(f"device {str(device)!r}: this machine has {count} CUDA device(s), numbered "
                                f"0 to {count - 1}")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingError(f"device {str(device)!r}: MPS is not available on this machine; use auto or cpu")


def distributed_init() -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns (rank, world_size).

    NCCL on CUDA (each rank on its LOCAL_RANK's GPU), gloo on CPU. The group is left at exit.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # before NCCL picks a device
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(dist.destroy_process_group)
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def any_rank(flag: bool, device="cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one (an all-reduce MAX); ``flag`` alone otherwise."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank_seed(seed: int, rank: int) -> int:
    """An independent seed for ``rank`` (numpy's SeedSequence hashing of (seed, rank)).

    Used for the per-rank noise streams under torchrun: seeding every rank with ``seed`` would give all
    ranks the same timesteps, noise and dropout masks, shrinking the effective batch of random draws.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0])


# ----------------------------------------------------------------------------- checkpoints


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


# ----------------------------------------------------------------------------- EMA and LR


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied).

    θ_ema ← d θ_ema + (1 − d) θ, with d_n = min(decay, (1 + n) / (10 + n)) when warm-up is on, so the
    average is not dominated by the random initialisation early in training.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = list(self.module.parameters())
        p = [x.detach() for x in model.parameters()]
        torch._foreach_lerp_(ema_p, p, 1.0 - d)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then constant, or cosine decay to ``min_lr_ratio * lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- data order


class ResumableSampler(Sampler):
    """Seeded shuffling whose position is a pure function of (seed, epoch, offset).

    Epoch e uses ``randperm(N)`` from a generator seeded with ``seed + e``; each rank takes every
    ``world``-th index (like DistributedSampler, dropping the tail so ranks stay equal). Resuming at
    step s sets the epoch and offset, so the batches after a resume are exactly those a straight run
    would have seen.

    Striding makes N ranks with batch B see exactly one process's batches of N*B: rank r's k-th batch
    is ``perm[N*(k*B + j) + r]`` for j < B, and over all r that is ``perm[k*N*B : (k+1)*N*B]``.
    Indices are handed out in chunks, never as one Python list, so memory does not grow with N.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.per_rank = n // world
        self.epoch, self.offset = 0, 0

    def __len__(self):
        return self.per_rank - self.offset

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
        mine = perm[self.rank :: self.world][self.offset :]
        for chunk in mine.split(4096):
            yield from chunk.tolist()


class BatchStream:
    """Endless micro-batches over a dataset, epoch after epoch, positioned by the number consumed."""

    def __init__(self, dataset, batch_size: int, seed: int, num_workers: int = 0, rank=0, world=1):
        n = len(dataset)
        self.batch_size = batch_size
        self.sampler = ResumableSampler(n, seed, rank, world)
        self.batches_per_epoch = self.sampler.per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise TrainingError(f"the dataset has {n} examples, fewer than one batch of {batch_size} per "
                                f"process; lower train.batch_size")
        self.loader_kwargs = dict(batch_size=batch_size, drop_last=True, num_workers=num_workers,
                                  persistent_workers=False)
        self.dataset = dataset
        self.consumed = 0
        self._it = None

    def seek(self, consumed_batches: int) -> None:
        self.consumed = consumed_batches
        self._it = None

    def __next__(self):
        if self._it is None:
            epoch, within = divmod(self.consumed, self.batches_per_epoch)
            self.sampler.epoch, self.sampler.offset = epoch, within * self.batch_size
            # A private generator: creating a DataLoader iterator draws a base seed, and drawing it from
            # the global RNG would make a resumed run's noise differ from a straight run's.
            g = torch.Generator().manual_seed(self.sampler.seed + epoch)
            self._it = iter(DataLoader(self.dataset, sampler=self.sampler, generator=g, **self.loader_kwargs))
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = None
            return next(self)
        self.consumed += 1
        if self.consumed % self.batches_per_epoch == 0:
            self._it = None  # next epoch, new permutation
        return batch


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------- health


class RunningBand:
    """Whether a value (loss, gradient norm) stays in its running band: a few float operations per step.

    Out of band: not finite, or above ``m + 2|m| + 8d``, where ``m`` is an exponential moving average of
    the values and ``d`` one of their absolute deviations from it (both with weight 0.01). Values are
    clipped to the band before they are averaged in, so a blow-up does not widen the band at once, while
    a lasting change of level (a loss term joining later) is followed within some tens of steps.
    """

    def __init__(self, rate: float = 0.01):
        self.rate, self.mean, self.dev, self.n = rate, 0.0, 0.0, 0

    def limit(self) -> float:
        return self.mean + 2.0 * abs(self.mean) + 8.0 * self.dev if self.n else math.inf

    def update(self, value: float) -> bool:
        """Take one value; True when it was inside the band."""
        if not math.isfinite(value):
            return False
        limit = self.limit()
        inside = value <= limit
        value = min(value, limit)
        if self.n == 0:
            self.mean = value
        else:
            self.dev += self.rate * (abs(value - self.mean) - self.dev)
            self.mean += self.rate * (value - self.mean)
        self.n += 1
        return inside

    def state(self) -> dict:
        return {"mean": self.mean, "dev": self.dev, "n": self.n}

    def load_state(self, d: dict) -> None:
        self.mean, self.dev, self.n = float(d["mean"]), float(d["dev"]), int(d["n"])


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """Run ``task`` for ``cfg.steps`` optimiser steps, writing into ``run_dir``.

    Args:
        task: see the module docstring.
        train_set: a map-style dataset whose items the task's ``losses`` understands.
        cfg: the ``train`` section of the run config.
        run_dir: ``runs/<name>``; checkpoints go to ``run_dir/checkpoints``, TensorBoard to ``run_dir/tb``.
        config_dict: the whole resolved run config, stored in every checkpoint.
        device: where the task's modules already are.
    """

    def __init__(self, task, train_set, cfg: TrainConfig, run_dir, config_dict: dict, device,
                 num_workers: int = 0):
        self.task, self.cfg, self.device = task, cfg, torch.device(device)
        flush_denormals()
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config_dict = config_dict
        self.rank, self.world = rank_and_world()
        self.main = self.rank == 0
        self.step = 0
        self.saved_step = None  # the step of the newest last.pt this process wrote or resumed from
        self.best = None
        self.stop_reason = None
        self.stop_signal = None  # the signal number when SIGINT/SIGTERM stopped the run (exit 128 + it)
        # Health (see RunningBand): a last.pt is promoted to healthy.pt once the first step after it saw the
        # loss and gradient norms inside their bands, and every step since the previous save did too.
        self.bands: dict[str, RunningBand] = {}
        self.interval_in_band = True  # no step since the last save left its band
        self.candidate_step = None  # the step of a last.pt waiting for that confirmation
        self.healthy_step = None  # the step of checkpoints/healthy.pt when this process knows it
        self.left_band_at = None  # the first step whose loss or gradient norm left its band, if any
        self.last_metrics: dict = {}  # the latest evaluation, e.g. for benchmarks
        self.train_seconds = 0.0  # wall time inside fit(), this process

        self.modules = {"model": task.model, **getattr(task, "extra_modules", {})}
        if self.world > 1:  # as DistributedDataParallel does: every rank starts from rank 0's weights
            with torch.no_grad():
                for module in self.modules.values():
                    for t in [*module.parameters(), *module.buffers()]:
                        dist.broadcast(t.data, src=0)
        groups = []
        for name, module in self.modules.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "name": name})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                           weight_decay=cfg.weight_decay)
        self.ema = EMA(task.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay is not None else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        if cfg.compile:
            task.model.compile()
        self.stream = BatchStream(train_set, cfg.batch_size, cfg.seed, num_workers, self.rank, self.world)
        self.writer = None
        if self.world > 1:  # the modules are built and identical on every rank; from here on ranks draw apart
            torch.manual_seed(rank_seed(cfg.seed, self.rank))

    # -- state ---------------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """The weights used for evaluation and samples: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.task.model

    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def _set_rng_state(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])

    def state_dict(self, rng_per_rank: list | None = None) -> dict:
        """Everything to resume; ``rng_per_rank`` (from every rank, see ``save``) makes torchrun resumes exact."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.task.model.state_dict(),
            "extra_modules": {k: m.state_dict() for k, m in self.modules.items() if k != "model"},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self._rng_state(),
            "rng_per_rank": rng_per_rank,
            "best": self.best,
            "config": self.config_dict,
            "task": self.task.state() if hasattr(self.task, "state") else {},
            "health": {k: b.state() for k, b in self.bands.items()},
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        try:
            self.task.model.load_state_dict(state["model"])
            for k, sd in state.get("extra_modules", {}).items():
                self.modules[k].load_state_dict(sd)
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:160]
            raise CheckpointError(f"checkpoint does not fit this run's model ({first}); "
                                  f"use a new run name or the config it was trained with") from None
        self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank")
        if self.world == 1:
            self._set_rng_state(state["rng"])
        elif per_rank is not None and len(per_rank) == self.world:
            self._set_rng_state(per_rank[self.rank])
        else:  # another number of processes than the run was saved with: fresh, still independent streams
            torch.manual_seed(rank_seed(self.cfg.seed + int(state["step"]), self.rank))
        self.step = int(state["step"])
        self.best = state.get("best")
        for k, d in state.get("health", {}).items():
            self.bands.setdefault(k, RunningBand()).load_state(d)
        if hasattr(self.task, "load_state"):
            self.task.load_state(state.get("task", {}))
        self.stream.seek(self.step * self.cfg.grad_accum)

    def save(self, name: str = "last.pt") -> None:
        """Rank 0 writes ``checkpoints/<name>``. Under torchrun ``last.pt`` is collective: every rank must
        call it at the same step, since it gathers every rank's random state for an exact resume."""
        rng_per_rank = None
        if self.world > 1 and name == "last.pt":
            rng_per_rank = [None] * self.world
            dist.all_gather_object(rng_per_rank, self._rng_state())
        if self.main:
            save_checkpoint(self.state_dict(rng_per_rank), self.ckpt_dir / name)
        if name == "last.pt":
            self.saved_step = self.step
            self.candidate_step = self.step if self.interval_in_band else None
            self.interval_in_band = True

    def try_resume(self) -> bool:
        """Continue from ``checkpoints/last.pt`` when it exists. Returns whether it did."""
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return False
        try:
            state = load_checkpoint(path, map_location=self.device)
        except CheckpointError as e:  # the generic advice ("delete it") would make the folder look new
            # healthy.pt is a hard link: when it is last.pt's own inode it holds the same damaged bytes
            kept = [p.name for p in (self.ckpt_dir / HEALTHY, self.ckpt_dir / "best.pt")
                    if p.exists() and not os.path.samefile(p, path)]
            way = (f"to continue from {kept[0]} instead: cp {self.ckpt_dir / kept[0]} {path} and rerun "
                   f"(best.pt is kept); " if kept else "")
            raise CheckpointError(f"{str(e).split('; delete it')[0]}; {way}to start over: --overwrite, or "
                                  f"pick another name=...") from None
        self.load_state_dict(state)
        self.saved_step = self.step
        self.candidate_step = self.step  # the first step after the resume confirms it
        return True

    # -- health ----------------------------------------------------------------------------------
    def _check_health(self, values: dict[str, float]) -> None:
        """Feed the step's loss and gradient norms to their bands; promote a confirmed last.pt."""
        inside = True
        for name, value in values.items():
            band = self.bands.get(name)
            if band is None:
                band = self.bands[name] = RunningBand()
            inside = band.update(value) and inside
        if not inside:
            self.interval_in_band = False
            if self.left_band_at is None:
                self.left_band_at = self.step
        if self.candidate_step is not None:
            if inside and self.candidate_step == self.step:
                self._promote_to_healthy()
            self.candidate_step = None

    def _promote_to_healthy(self) -> None:
        """healthy.pt := last.pt, as a hard link (no copy, no write); a copy where links are not possible."""
        if self.main:
            last, healthy = self.ckpt_dir / "last.pt", self.ckpt_dir / HEALTHY
            tmp = healthy.with_name(f".{HEALTHY}.tmp{os.getpid()}")
            try:
                tmp.unlink(missing_ok=True)
                try:
                    os.link(last, tmp)
                except OSError:
                    shutil.copyfile(last, tmp)
                os.replace(tmp, healthy)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                print(f"warning: could not keep {healthy} ({e.strerror or e}; {free_space(healthy.parent)})",
                      file=sys.stderr, flush=True)
                return
        self.healthy_step = self.step

    def _diverged(self) -> str:
        """After a non-finite loss or gradient: put the last healthy checkpoint back as last.pt; say what is kept."""
        last, healthy = self.ckpt_dir / "last.pt", self.ckpt_dir / HEALTHY
        left = (f"; the loss or gradient norm left its running band at step {self.left_band_at}"
                if self.left_band_at is not None else "")
        if self.main and healthy.exists():
            step = self.healthy_step
            if step is None:  # written by an earlier process
                try:
                    step = int(torch.load(healthy, map_location="cpu", weights_only=True, mmap=True)["step"])
                except Exception:
                    step = None
            if step is not None and step != self.saved_step:
                tmp = last.with_name(f".last.pt.tmp{os.getpid()}")
                try:
                    tmp.unlink(missing_ok=True)
                    try:
                        os.link(healthy, tmp)
                    except OSError:  # no hard links here: a copy, renamed into place all the same
                        shutil.copyfile(healthy, tmp)
                    os.replace(tmp, last)
                except OSError as e:
                    tmp.unlink(missing_ok=True)
                    return (f"the last healthy checkpoint (step {step}{left}) is {healthy}, but it could not be put "
                            f"back as last.pt ({e.strerror or e}): cp {healthy} {last}, then rerun with a lower "
                            f"train.lr")
            if step is not None:
                return (f"last.pt now holds the last healthy checkpoint (step {step}{left}), "
                        f"kept also as {healthy}; rerun with a lower train.lr to continue from it")
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return (f"no healthy checkpoint was confirmed yet{left}; {last} (step {self.saved_step}) is kept as it was; "
                f"rerun with a lower train.lr to continue from it, or --overwrite to start over")

    # -- one optimiser step ----------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _average_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        """Under torchrun, all-reduce the gradients and ``loss`` (mean over ranks) in one flat buffer.

        The loss rides along so that a NaN on any rank is seen by every rank in the same step, and all
        stop together instead of some waiting forever in the next all-reduce. Returns the mean loss.
        """
        if self.world == 1:
            return loss
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        dtype = grads[0].dtype if grads else loss.dtype
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(dtype)])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1]

    def train_step(self) -> dict:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        logs_sum: dict[str, float] = {}
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(cfg.grad_accum):
            batch = to_device(next(self.stream), self.device)
            with self._autocast():
                losses, logs = self.task.losses(batch, self.step)
            total = sum(v for v in losses.values() if v is not None)
            # A non-finite loss only poisons the gradients, which are thrown away below: no step is taken.
            self.scaler.scale(total / cfg.grad_accum).backward()
            loss_sum += total.detach().float() / cfg.grad_accum
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / cfg.grad_accum
        mean_loss = float(self._average_gradients(loss_sum))
        if not math.isfinite(mean_loss):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in logs_sum.items())
            where = f" (rank {self.rank}: " if self.world > 1 else " ("
            raise TrainingError(f"loss is {mean_loss} at step {self.step}{where}{terms}); {self._diverged()} "
                                f"(or check the data)")
        self.scaler.unscale_(self.optimizer)
        health = {"loss": mean_loss}
        for group in self.optimizer.param_groups:
            norm = float(torch.nn.utils.clip_grad_norm_(group["params"], cfg.grad_clip or float("inf")))
            # fp16's GradScaler skips steps with inf gradients by design; without it they would poison the weights
            if not math.isfinite(norm) and not self.scaler.is_enabled():
                raise TrainingError(f"gradient norm of {group['name']} is {norm} at step {self.step} (loss "
                                    f"{mean_loss:.4g}); {self._diverged()} (or set train.grad_clip)")
            logs_sum[f"grad_norm/{group['name']}"] = norm
            if math.isfinite(norm):
                health[f"grad_norm/{group['name']}"] = norm
        self._check_health(health)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.task.model)
        self.step += 1
        logs_sum["lr"] = lr_at(self.step - 1, cfg)
        return logs_sum

    # -- the loop --------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        def handler(signum, frame):
            self.stop_reason = signal.Signals(signum).name
            self.stop_signal = int(signum)
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. called from a notebook worker)
                pass
        return previous

    def _evaluate(self) -> dict:
        if not hasattr(self.task, "evaluate"):
            return {}
        metrics = self.task.evaluate(self.eval_model, self.step)
        self.last_metrics = dict(metrics)
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"eval/{k}", v, self.step)
            print(f"eval step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        best_spec = getattr(self.task, "best_metric", None)
        if best_spec and best_spec[0] in metrics:
            name, mode = best_spec
            value = metrics[name]
            better = self.best is None or (value < self.best if mode == "min" else value > self.best)
            if better:
                self.best = value
                self.save("best.pt")
        return metrics

    def _guarded(self, what: str, fn):
        """Run ``fn`` (evaluation, pictures); if it fails, save last.pt first, then stop with one line."""
        try:
            return fn()
        except CheckpointError:
            raise
        except Exception as e:
            if os.environ.get("LATENTDIFF_DEBUG"):
                raise
            saved = ""
            if self.world == 1:  # under torchrun saving is collective and the other ranks are not here
                if self.saved_step != self.step:
                    self.save("last.pt")
                saved = f"; the weights of step {self.step} are saved in {self.ckpt_dir / 'last.pt'}"
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise TrainingError(f"{what} failed at step {self.step} ({type(e).__name__}: {first}){saved}; "
                                f"fix the cause and rerun the same command to continue") from None

    def fit(self) -> dict:
        """Train until ``cfg.steps`` (or the time budget, or a signal). Returns the last evaluation."""
        from tqdm import tqdm

        cfg = self.cfg
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
            if self.step == 0:
                import yaml

                text = yaml.safe_dump(self.config_dict, sort_keys=False)
                self.writer.add_text("config", "```\n" + text + "\n```", 0)
        if self.step == 0 and self.saved_step is None:
            # The starting point is the first healthy candidate: a run that diverges before its first confirmed
            # checkpoint can still be resumed (from here) with a lower learning rate. One write per fresh run.
            self.save("last.pt")
        previous = self._install_signal_handlers()
        use_bar = self.main and sys.stderr.isatty()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not use_bar, dynamic_ncols=True)
        start, last_log_t, last_log_step = time.time(), time.time(), self.step
        metrics: dict = {}
        try:
            while self.step < cfg.steps:
                logs = self.train_step()
                bar.update(1)
                if use_bar:
                    bar.set_postfix(loss=f"{logs.get('loss', next(iter(logs.values()))):.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.time()
                    ips = (self.step - last_log_step) * cfg.batch_size * cfg.grad_accum * self.world / max(
                        now - last_log_t, 1e-9)
                    last_log_t, last_log_step = now, self.step
                    if self.writer is not None:
                        for k, v in logs.items():
                            self.writer.add_scalar(f"train/{k}", v, self.step)
                        self.writer.add_scalar("train/images_per_sec", ips, self.step)
                    if self.main and not use_bar:
                        terms = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if "/" not in k)
                        print(f"step {self.step}/{cfg.steps} {terms} {ips:.1f} img/s", flush=True)
                if cfg.max_minutes is not None and time.time() - start > 60 * cfg.max_minutes:
                    self.stop_reason = self.stop_reason or f"time budget of {cfg.max_minutes} min"
                # Decided once per step, so a signal that lands later is saved at the end of the next step
                # rather than skipped, and by all ranks together, so none is left waiting in an all-reduce.
                stopping = any_rank(self.stop_reason is not None, self.device)
                if stopping and self.stop_reason is None:
                    self.stop_reason = "another rank was stopped"
                finishing = self.step == cfg.steps or stopping
                if self.main and (self.step % cfg.eval_every == 0 or finishing):
                    metrics = self._guarded("the evaluation", self._evaluate)
                # Weights first, pictures after: a failed sample grid must never cost the interval's training.
                if self.step % cfg.checkpoint_every == 0 or finishing:
                    self.save("last.pt")
                if self.main and hasattr(self.task, "log_images") and (
                        self.step % cfg.image_every == 0 or finishing):
                    self._guarded("drawing the sample grids",
                                  lambda: self.task.log_images(self.writer, self.eval_model, self.step))
                if stopping:
                    break
        finally:
            self.train_seconds += time.time() - start
            bar.close()
            for sig, h in previous.items():
                signal.signal(sig, h)
            if self.writer is not None:
                self.writer.flush()
        if self.writer is not None and self.step >= cfg.steps and metrics:
            hparams = {k: v for k, v in _flatten(self.config_dict).items() if isinstance(v, int | float | str | bool)}
            self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")
            self.writer.close()
        return metrics


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def seed_everything(seed: int) -> None:
    """One seed for the run; CPU kernels are deterministic, so CPU runs repeat bit for bit."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- run folders

# Keys that may change when a run is continued: they do not alter what has been trained so far
# (train.lr and train.grad_clip so that a run stopped by a NaN loss can go on more gently).
RESUMABLE_KEYS = ("train.steps", "train.max_minutes", "train.lr", "train.grad_clip", "train.log_every",
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
        a, b = _flatten(old if isinstance(old, dict) else {}), _flatten(config_dict)
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
        tmp = run_dir / f".config.yaml.tmp{os.getpid()}"
        tmp.write_text(yaml.safe_dump(config_dict, sort_keys=False))
        os.replace(tmp, run_dir / "config.yaml")


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

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows
            fcntl = None
        self.created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
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


def train(task, train_set, cfg: TrainConfig, run_dir, config_dict: dict, device, resume: bool,
          num_workers: int = 0, argv: list[str] | None = None, overwrite: bool = False) -> Trainer:
    """What both training commands do once their task is built: lock the folder, resume or start, fit, report.

    Prints how to resume after SIGINT/SIGTERM or a time budget (``trainer.stop_signal`` then holds the
    signal: the commands exit with 128 + it); raises TrainingError on NaN, CheckpointError on a failed save.
    """
    trainer = Trainer(task, train_set, cfg, run_dir, config_dict, device, num_workers)
    lock = lock_run_dir(run_dir, trainer.device)
    try:
        _train_locked(trainer, run_dir, config_dict, resume, overwrite, argv)
    finally:
        if lock is not None:
            lock.release()
    return trainer


def _train_locked(trainer: Trainer, run_dir, config_dict: dict, resume: bool, overwrite: bool, argv) -> None:
    resuming = check_run_dir(run_dir, config_dict, resume, overwrite)
    if overwrite and is_main_process():
        clear_run_outputs(run_dir)
    if resuming:
        trainer.try_resume()
        if is_main_process():
            print(f"resuming {run_dir} from step {trainer.step}", flush=True)
    if trainer.world > 1:  # a rank that cannot see rank 0's last.pt would silently start over
        lo_hi = torch.tensor([-trainer.step, trainer.step], device=trainer.device)
        dist.all_reduce(lo_hi, op=dist.ReduceOp.MAX)
        if -lo_hi[0] != lo_hi[1]:
            raise TrainingError(f"ranks would resume {run_dir} from different steps ({-int(lo_hi[0])} to "
                                f"{int(lo_hi[1])}); put out_dir on a filesystem that every node shares")
    write_run_config(run_dir, config_dict)  # only now: a checkpoint that does not load leaves the folder as it was
    if is_main_process():
        for folder in (trainer.ckpt_dir, Path(run_dir)):  # left by a run killed while saving (the lock is ours)
            remove_stale_temporaries(folder)
        if hasattr(trainer.task, "write_run_files"):  # files a checkpoint names (stage two: its autoencoder copy)
            trainer.task.write_run_files(run_dir)
    trainer.fit()
    if is_main_process():
        if trainer.stop_reason is not None:
            cmd = shlex.join(a for a in (argv if argv is not None else sys.argv) if a != "--overwrite")
            launcher = "torchrun <the same options> " if trainer.world > 1 else "python "
            print(f"stopped at step {trainer.step} ({trainer.stop_reason}); checkpoint saved to "
                  f"{trainer.ckpt_dir / 'last.pt'}; resume with: {launcher}{cmd}", flush=True)
        print(f"TensorBoard logs: tensorboard --logdir {Path(run_dir) / 'tb'}", flush=True)
