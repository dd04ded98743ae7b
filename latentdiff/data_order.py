"""A seeded, resumable data order: the same batches in the same order after a resume, split across ranks."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from latentdiff.runtime import TrainingError


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
