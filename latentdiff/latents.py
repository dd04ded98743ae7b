"""Encode a dataset once into a memory-mapped latent cache; latent normalisation statistics.

Stage two never runs the encoder during training: the dataset is encoded once (with a progress
bar) into ``<cache_dir>/<key>/``, where ``key`` hashes the autoencoder checkpoint and the data
config, so a second run reuses the cache and a changed autoencoder or data config builds a new
one. A VAE stores its posterior mean and log-variance, so training draws a fresh z ~ q(z|x) every
time it sees an image; a deterministic autoencoder stores z. Arrays are ``.npy`` files written with
ordinary writes (``NpyWriter``: a full disk is an error, not the SIGBUS of a memory map) after a
free-space check, and read row by row with ``os.pread`` (``NpyRows``), so a dataset larger than RAM trains
with flat resident memory: read pages stay in the kernel's page cache instead of being mapped into the
process. Under torchrun the ranks encode one shard each and rank 0 joins them (see
``build_latent_cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

CACHE_FORMAT = 1


class LatentCacheError(RuntimeError):
    """A latent cache that cannot be written or read, phrased as one line for the user.

    ``exit_status``: what the command exits with (2; 128 + the signal when one stopped the encoding).
    """

    exit_status = 2


class _Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_interrupt():
    """SIGINT and SIGTERM raise ``_Interrupted`` (SIGTERM would otherwise kill without any cleanup)."""
    import signal

    def handler(signum, frame):
        raise _Interrupted(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _free_space(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


class NpyWriter:
    """A ``.npy`` file written front to back with ordinary writes: the header, then rows in order."""

    def __init__(self, path: Path, dtype, shape: tuple):
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.f = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.f, header)
        self.rows = 0

    @staticmethod
    def nbytes(dtype, shape: tuple) -> int:
        return int(np.dtype(dtype).itemsize * np.prod(shape, dtype=np.int64)) + 128  # the header, at most

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows {rows.shape} do not fit {self.shape} after {self.rows} rows")
        self.f.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        """Flush to the disk (on a network filesystem this is what makes the file visible to rank 0)."""
        if self.f.closed:
            return
        try:
            if self.rows != self.shape[0]:
                raise ValueError(f"{self.path}: {self.rows} rows written of {self.shape[0]}")
            self.f.flush()
            os.fsync(self.f.fileno())
        finally:
            self.f.close()


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, hex: the autoencoder's identity, recorded in every stage-two checkpoint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def autoencoder_identity(ae_record: dict) -> str:
    """What a latent cache of this autoencoder is keyed on: its checkpoint's hash and which of its weights encode.

    The EMA weights (``ae.use_ema``, the default) are keyed by the hash alone, as every cache before this was;
    the raw weights of the same checkpoint encode other latents, so they get a key of their own.
    ``ae_record``: a stage-two checkpoint's ``task["ae"]`` ({"hash", "use_ema", ...})."""
    return ae_record["hash"] if ae_record.get("use_ema", True) else f"{ae_record['hash']}+raw-weights"


def cache_key(ae_hash: str, data_config: dict, split: str) -> str:
    """Key of one cache entry: the autoencoder's hash plus everything that decides the images."""
    relevant = {k: v for k, v in data_config.items() if k not in ("root", "download", "num_workers")}
    blob = json.dumps({"ae": ae_hash, "data": relevant, "split": split, "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class NpyRows:
    """Read-only rows of a ``.npy`` file, each read with ``os.pread``: ``rows[i]``, ``rows[a:b]``, ``len``.

    Why not ``np.load(mmap_mode="r")``: pages of a memory map that were touched count in the process's
    resident set (RssFile), so a shuffled pass over a memory-mapped cache makes ``ps`` and cluster
    schedulers see a process as large as the cache. ``pread`` copies just the asked rows into fresh
    arrays; the file's pages stay in the kernel's page cache, shared and reclaimable, never mapped.
    A row of 1 KiB costs one system call (~2 µs), far below a denoiser step.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, self.dtype = read_header(f)
            self.offset = f.tell()
        if fortran_order:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not latent caches; rebuild the cache")
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        size = os.path.getsize(self.path)
        if size != self.offset + self.shape[0] * self.row_bytes:  # found now rather than at some later row
            raise OSError(f"{self.path}: {size} bytes where its header promises "
                          f"{self.offset + self.shape[0] * self.row_bytes} (truncated cache?)")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, count: int) -> np.ndarray:
        nbytes = count * self.row_bytes
        buf = os.pread(self._fd, nbytes, self.offset + start * self.row_bytes)
        if len(buf) != nbytes:
            raise OSError(f"{self.path}: file ends early (truncated cache?); delete its folder to rebuild it")
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, *self.shape[1:])

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("NpyRows supports contiguous slices only")
            return self._read(start, max(0, stop - start))
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        return self._read(i % len(self), 1)[0]

    def __getstate__(self):  # DataLoader workers started with spawn reopen the file
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


def _open_rows(path: Path):
    """``NpyRows`` where the OS has ``pread`` (Linux, macOS), a read-only memory map elsewhere."""
    return NpyRows(path) if hasattr(os, "pread") else np.load(path, mmap_mode="r")


class LatentCache(Dataset):
    """A built cache: items are ``(mean, logvar, attrs)``; ``logvar`` is empty for a deterministic AE."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        name = "meta.json"
        try:  # a truncated or garbled file (a disk that filled up, bit rot, a hand edit) is one line
            self.meta = json.loads((self.folder / name).read_text())
            name = "mean.npy"
            self.mean = _open_rows(self.folder / name)
            name = "logvar.npy"
            self.logvar = _open_rows(self.folder / name) if self.meta["stochastic"] else None
            name = "attrs.npy"
            self.attrs = _open_rows(self.folder / name)
            if len(self.attrs) != len(self.mean) or (self.logvar is not None and self.logvar.shape != self.mean.shape):
                raise ValueError("its arrays do not have matching rows")
        except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise LatentCacheError(f"latent cache file {self.folder / name} is truncated or garbled ({first}); "
                                   f"delete the folder {self.folder} and rerun to encode it again") from None

    @property
    def stochastic(self) -> bool:
        return self.logvar is not None

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.mean.shape[1:])

    def __len__(self):
        return self.mean.shape[0]

    def __getitem__(self, i):
        mean = torch.from_numpy(np.array(self.mean[i]))
        logvar = torch.from_numpy(np.array(self.logvar[i])) if self.logvar is not None else torch.empty(0)
        return mean, logvar, torch.from_numpy(np.array(self.attrs[i])).long()


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _from_rank0(value):
    """Rank 0's ``value`` on every rank (a broadcast under torchrun), so that all ranks take one branch."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_ranks(flag: bool) -> bool:
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, flag)
    return all(box)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


ARRAYS = ("mean", "logvar", "attrs")


@torch.no_grad()
def _encode_shard(autoencoder, dataset, folder: Path, stochastic: bool, attr_shape: tuple, batch_size: int,
                  device, progress: bool) -> None:
    """Encode ``dataset`` into ``folder/{mean,logvar,attrs}.npy``, written batch by batch (``NpyWriter``)."""
    from tqdm import tqdm

    folder.mkdir()
    n, shape = len(dataset), tuple(autoencoder.latent_shape)
    out = {"mean": NpyWriter(folder / "mean.npy", np.float32, (n, *shape)),
           "attrs": NpyWriter(folder / "attrs.npy", np.int64, (n, *attr_shape))}
    if stochastic:
        out["logvar"] = NpyWriter(folder / "logvar.npy", np.float32, (n, *shape))
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for x, a in tqdm(loader, desc="encoding latents", disable=not progress, dynamic_ncols=True):
            posterior = autoencoder.encode(x.to(device))
            b = x.shape[0]
            out["mean"].write((posterior.mean if stochastic else posterior.mode()).float().cpu().numpy())
            if stochastic:
                out["logvar"].write(posterior.logvar.float().cpu().numpy())
            out["attrs"].write(np.asarray(a).reshape(b, *attr_shape))
        for array in out.values():
            array.close()
    finally:
        for array in out.values():
            array.f.close()


def _join_shards(parts: list[Path], folder: Path, chunk_bytes: int = 64 << 20) -> None:
    """Concatenate the ranks' shard arrays into ``folder/<array>.npy``, a bounded chunk at a time."""
    for name in ARRAYS:
        shards = [np.load(p / f"{name}.npy", mmap_mode="r") for p in parts if (p / f"{name}.npy").exists()]
        if not shards:
            continue
        total = sum(len(a) for a in shards)
        joined = NpyWriter(folder / f"{name}.npy", shards[0].dtype, (total, *shards[0].shape[1:]))
        try:
            rows = max(1, chunk_bytes // max(1, shards[0][:1].nbytes))
            for a in shards:
                for j in range(0, len(a), rows):
                    joined.write(a[j : j + rows])
            joined.close()
        finally:
            joined.f.close()
        del shards


def cache_bytes(autoencoder, n: int, attr_shape: tuple, stochastic: bool) -> int:
    """The size of a cache of ``n`` rows on disk: mean (and logvar) float32 rows, attrs int64 rows."""
    shape = tuple(autoencoder.latent_shape)
    arrays = [(np.float32, (n, *shape)), (np.int64, (n, *attr_shape))] + ([(np.float32, (n, *shape))]
                                                                          if stochastic else [])
    return sum(NpyWriter.nbytes(dtype, s) for dtype, s in arrays) + 4096  # + meta.json


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_cache_temporaries(root: Path) -> list[Path]:
    """Delete ``<key>.tmp-<pid>-<host>`` folders that a killed encode of this host left (its PID is gone)."""
    import socket

    removed = []
    if not root.is_dir():
        return removed
    host = socket.gethostname()
    for p in root.glob("*.tmp-*"):
        pid, _, their_host = p.name.rsplit(".tmp-", 1)[1].partition("-")
        if not pid.isdigit() or (their_host and their_host != host) or _pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():  # say "removed" only of what is gone
            removed.append(p)
    return removed


def build_latent_cache(autoencoder, dataset, folder: str | Path, batch_size: int = 256, device="cpu",
                       progress: bool = True, meta: dict | None = None) -> LatentCache:
    """Encode ``dataset`` (items ``(image, attrs)``) into ``folder`` unless it is already there.

    Under torchrun every rank calls this (it holds collectives): rank r of W encodes the contiguous
    slice ``[r*N//W, (r+1)*N//W)`` into its own shard files in a shared temporary folder, then rank 0
    joins the shards in order, writes ``meta.json`` and renames the folder into place. The rename is
    the commit, so an interrupted encode never leaves a half-written cache that a later run would
    trust. ``folder`` must be on a filesystem every rank sees (a one-line error says so otherwise).
    """
    import socket

    folder = Path(folder)
    rank, world = _rank_and_world()
    if rank == 0:
        for p in remove_stale_cache_temporaries(folder.parent):
            print(f"removed {p}, a latent cache left half-written by a process that is gone", flush=True)
    autoencoder.eval()
    stochastic = not getattr(autoencoder, "is_deterministic", False)
    n = len(dataset)
    attr_shape = tuple(np.asarray(dataset[0][1]).shape) if n else (0,)
    # Rank 0 decides hit or miss and names the temporary folder: ranks must not take different branches.
    tmp_name = f"{folder.name}.tmp-{os.getpid()}-{socket.gethostname()}"
    hit = (folder / "meta.json").exists()
    short = None
    if rank == 0 and not hit:  # the size is known: say so now rather than die half-way (or by SIGBUS)
        from latentdiff.run_folder import unwritable

        needed = cache_bytes(autoencoder, n, attr_shape, stochastic) * (2 if world > 1 else 1)  # shards + joined
        free = _free_space(folder.parent)
        if problem := unwritable(folder.parent):
            short = (f"latent cache {folder}: cannot be written ({problem}); point latents.cache_dir at a writable "
                     f"folder or make that one writable")
        elif free < needed:
            short = (f"latent cache {folder}: needs {_gb(needed)} but {folder.parent} has {_gb(free)} free; free "
                     f"some space or point latents.cache_dir at a larger disk")
    hit, tmp_name, short = _from_rank0((hit, tmp_name, short))
    if short:
        raise LatentCacheError(short)
    if not hit:
        tmp = folder.with_name(tmp_name)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        if not _all_ranks(tmp.is_dir()):
            raise FileNotFoundError(f"latents.cache_dir: {folder.parent} is not shared by all ranks; point it "
                                    f"at a folder on a filesystem every node sees")
        lo, hi = rank * n // world, (rank + 1) * n // world
        try:
            with _signals_interrupt():
                _encode_shard(autoencoder, Subset(dataset, range(lo, hi)), tmp / f"part-{rank:05d}", stochastic,
                              attr_shape, batch_size, device, progress and rank == 0)
        except _Interrupted as e:
            import signal

            shutil.rmtree(tmp, ignore_errors=True)
            err = LatentCacheError(f"{signal.Signals(e.signum).name} while encoding the latent cache {folder}: "
                                   f"the partial cache was removed; rerun the command to encode it again")
            err.exit_status = 128 + e.signum
            raise err from None
        except OSError as e:  # a disk that filled up after the check (another writer), a quota
            shutil.rmtree(tmp, ignore_errors=True)
            raise LatentCacheError(f"latent cache {folder}: could not write {e.filename or tmp} "
                                   f"({e.strerror or e}; {_gb(_free_space(folder.parent))} free on {folder.parent}); "
                                   f"the partial cache was removed") from None
        except BaseException:  # Ctrl-C while encoding: leave no half-written cache behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _barrier()
        if rank == 0:
            parts = [tmp / f"part-{r:05d}" for r in range(world)]
            if world == 1:  # the one shard is the whole cache: move instead of copying
                for name in ARRAYS:
                    if (parts[0] / f"{name}.npy").exists():
                        os.replace(parts[0] / f"{name}.npy", tmp / f"{name}.npy")
            else:
                _join_shards(parts, tmp)
            for part in parts:
                shutil.rmtree(part)
            info = {"format": CACHE_FORMAT, "stochastic": stochastic, "n": n,
                    "latent_shape": list(autoencoder.latent_shape), **(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(info, indent=1))
            if folder.exists():  # another run finished the same cache first; theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        _barrier()
    if not (folder / "meta.json").exists():
        raise FileNotFoundError(f"latents.cache_dir: rank {rank} cannot see the cache {folder} that rank 0 "
                                f"built; point latents.cache_dir at a filesystem every node shares")
    return LatentCache(folder)


def sample_latents(mean: torch.Tensor, logvar: torch.Tensor, generator=None) -> torch.Tensor:
    """z ~ q(z|x) = N(mean, exp(logvar)) by reparameterisation; ``mean`` itself when logvar is empty."""
    if logvar.numel() == 0:
        return mean
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


def training_batch(batch, from_cache: bool, normaliser: LatentNormaliser) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised z, attrs) of a training batch: a cache batch (mean, logvar, attrs) draws a fresh z ~ q(z|x)
    every time; a batch of data points (z, attrs) is taken as it is (a diffusion directly on data)."""
    if from_cache:
        mean, logvar, attrs = batch
        z = sample_latents(mean, logvar)
    else:
        z, attrs = batch
    return normaliser.normalise(z), attrs


@dataclass
class LatentNormaliser:
    """z_n = (z − shift) · scale, per channel (dim 1) or one global scale.

    ``scale`` mode is LDM's "scale factor" (1/std of the latents, shift 0); ``channel`` standardises
    each channel; ``none`` is the identity. The log-determinant of the map, needed to express a
    likelihood of z_n as one of z, is ``log_det_jacobian``.
    """

    shift: torch.Tensor  # (C,) or scalar
    scale: torch.Tensor

    def _view(self, v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        v = v.to(z.device, z.dtype)
        return v.view(1, -1, *([1] * (z.dim() - 2))) if v.dim() == 1 else v

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self._view(self.shift, z)) * self._view(self.scale, z)

    def denormalise(self, z_n: torch.Tensor) -> torch.Tensor:
        return z_n / self._view(self.scale, z_n) + self._view(self.shift, z_n)

    def log_det_jacobian(self, latent_shape: tuple) -> float:
        """log |det ∂z_n/∂z| for one example of ``latent_shape`` (nats)."""
        per_elem = torch.log(self.scale.double().abs())
        if per_elem.dim() == 0:
            return float(per_elem) * int(np.prod(latent_shape))
        spatial = int(np.prod(latent_shape[1:])) if len(latent_shape) > 1 else 1
        return float(per_elem.sum()) * spatial

    def state(self) -> dict:
        return {"shift": self.shift.clone(), "scale": self.scale.clone()}

    @classmethod
    def from_state(cls, d: dict) -> LatentNormaliser:
        return cls(shift=d["shift"], scale=d["scale"])

    @classmethod
    def identity(cls) -> LatentNormaliser:
        return cls(torch.tensor(0.0), torch.tensor(1.0))


def fit_normaliser(mean, logvar=None, mode: str = "scale", max_examples: int = 20_000) -> LatentNormaliser:
    """Normalisation statistics of z ~ q(z|x), from arrays of posterior means (and log-variances).

    ``mean``: (N, *latent_shape) array or tensor (a memory map is fine: only the first
    ``max_examples`` are read). For a VAE the aggregate posterior's moments are exact from the cached
    Gaussians, E[z] = E[μ] and Var[z] = Var[μ] + E[σ²] (law of total variance), no sampling needed.
    """
    if mode == "none":
        return LatentNormaliser.identity()
    n = min(len(mean), max_examples)
    mu = torch.as_tensor(np.array(mean[:n])).double()
    var_extra = torch.as_tensor(np.array(logvar[:n])).double().exp() if logvar is not None else torch.zeros_like(mu)
    if mode == "scale":
        total_var = mu.var(unbiased=False) + var_extra.mean()
        return LatentNormaliser(torch.tensor(0.0), (1.0 / total_var.sqrt()).float())
    if mode == "channel":
        dims = [0] + list(range(2, mu.dim()))
        centre = mu.mean(dim=dims)
        var = mu.var(dim=dims, unbiased=False) + var_extra.mean(dim=dims)
        return LatentNormaliser(centre.float(), (1.0 / var.clamp_min(1e-12).sqrt()).float())
    raise ValueError(f"latents.normalisation: {mode!r} is not one of 'scale', 'channel', 'none'")
