"""CIFAR-10 from torchvision's on-disk layout: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}``.

Each batch is a pickled dict with ``data`` (N, 3072) uint8 rows (R, G, B planes of 32×32) and
``labels``. ``download=True`` fetches the archive with torchvision into ``root``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from latentdiff.data.common import (
    TensorImageDataset,
    check_split,
    default_download_root,
    resize_uint8,
    take_first,
    torchvision_download,
)
from latentdiff.data.schema import AttributeSchema

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FOLDER = "cifar-10-batches-py"
SYSTEM_ROOTS = ["/usr/share/datasets/cifar10", "/usr/share/datasets/cifar-10"]


# What a CIFAR-10 batch may name: numpy's array reconstruction (numpy 1 and 2 spellings, protocols 2 to 5) and
# the codec protocol 2 uses for bytes. Everything else (os.system, builtins.eval, ...) is refused unread.
_CIFAR_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                  ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}


class _BatchUnpickler(pickle.Unpickler):
    """Reads the arrays, lists, dicts and strings a CIFAR-10 batch holds and nothing else: reading a dataset
    never runs code from it (a crafted ``data_batch_1`` in ``data.root`` is refused in one line)."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) labels of one pickled CIFAR-10 batch (restricted unpickler)."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        why = str(e) if isinstance(e, pickle.UnpicklingError) and str(e).startswith("it asks") else type(e).__name__
        raise ValueError(f"{path}: not a readable CIFAR-10 batch ({why}); delete the folder and "
                         f"download it again") from None
    return data, labels


class CIFAR10(TensorImageDataset):
    """CIFAR-10, 3×32×32, attribute ``class``.

    Args:
        split: "train" (50 000) or "test" (10 000).
        root: folder holding ``cifar-10-batches-py/`` (or that folder itself).
        download: fetch with torchvision into ``root`` when it is missing.
        image_size: default 32; another size resizes.
        size: keep the first ``size`` examples (default all).
    """

    def __init__(self, split: str = "train", root: str | None = None, download: bool = False,
                 image_size: int | None = None, size: int | None = None):
        check_split(split)
        folder = self.locate(split, root, download)
        parts = [load_batch(folder / b) for b in BATCHES[split]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        n = take_first(len(images), size, f"cifar10 {split}")
        x = resize_uint8(torch.from_numpy(images[:n]), 32 if image_size is None else int(image_size))
        super().__init__(x, torch.from_numpy(labels[:n])[:, None], AttributeSchema(["class"], [CLASSES]))

    @staticmethod
    def locate(split: str, root: str | None, download: bool) -> Path:
        roots = ([Path(root).expanduser()] if root else []) + [Path(p) for p in SYSTEM_ROOTS]
        folders = [f for r in roots for f in (r / FOLDER, r)]
        for folder in folders:
            if all((folder / b).is_file() for b in BATCHES[split]):
                return folder
        if download:
            target = Path(root).expanduser() if root else default_download_root()
            torchvision_download("CIFAR10", target, split)
            return target / FOLDER
        raise FileNotFoundError(f"cifar10: {', '.join(BATCHES[split])} not found in "
                                f"{', '.join(map(str, folders))}; set data.root to the folder holding "
                                f"{FOLDER}/, or set data.download: true")
