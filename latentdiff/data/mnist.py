"""MNIST and Fashion-MNIST from IDX files, parsed with numpy.

Files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each raw or ``.gz``) are looked for in ``root`` and its usual
sub-folders (torchvision's ``<root>/FashionMNIST/raw``) when ``root`` is set, else in system locations
(Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/*.gz``), then fetched
with torchvision (into ``root``) when ``download=True``. The 28×28 digits are padded with black to 32×32
by default.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): big-endian magic ``0x00 0x00 <dtype>
<ndim>``, then ``ndim`` big-endian uint32 dimensions, then the data.
"""

from __future__ import annotations

import gzip
import zlib
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

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

FLAVOURS = {
    "mnist": {
        "classes": [str(d) for d in range(10)],
        "subdirs": ["", "MNIST/raw", "mnist", "MNIST"],
        "system": ["/usr/share/datasets/mnist", "/usr/share/mnist"],
        "torchvision": "MNIST",
        "debian": None,
    },
    "fashion_mnist": {
        "classes": ["t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                    "bag", "ankle_boot"],
        "subdirs": ["", "FashionMNIST/raw", "fashion-mnist", "fashion_mnist", "FashionMNIST"],
        "system": ["/usr/share/datasets/fashion-mnist"],
        "torchvision": "FashionMNIST",
        "debian": "dataset-fashion-mnist",
    },
}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (raw, or gzip when the name ends in .gz)."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip raises these for corrupt or truncated archives
        raise ValueError(f"{path}: cannot read IDX file ({e}); delete it and fetch it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'}); "
                         f"delete it and fetch it again")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated; delete the file and fetch it again")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX file truncated or padded ({len(data) - header} data bytes, header "
                         f"{dims} needs {expected}); delete it and fetch it again")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def candidate_folders(flavour: str, root: str | None) -> list[Path]:
    """Folders searched, in order: ``root`` and its usual sub-folders when it is set, else the system locations
    (a ``data.root`` without the files is an error, never silently replaced by another copy)."""
    spec = FLAVOURS[flavour]
    if root:
        return [Path(root).expanduser() / sub for sub in spec["subdirs"]]
    return [Path(p) for p in spec["system"]]


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``; torchvision's dotted variant ``stem`` with '.' also works."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


_ANNOUNCED: set = set()  # (flavour, folder) pairs already printed in this process


def _complete(folder: Path, flavour: str, split: str, user_folder: bool) -> tuple[Path, Path] | None:
    """``split``'s (images, labels) when ``folder`` holds all four files of both splits, else None.

    One folder serves both splits, so training and testing never mix two copies. A folder under
    ``data.root`` that holds only some of the four files is refused (one line), not completed from
    elsewhere; the folder used is printed once.
    """
    stems = FILES["train"] + FILES["test"]
    found = {s: find_file(folder, s) for s in stems}
    have = [s for s in stems if found[s]]
    if len(have) == len(stems):
        if (flavour, folder) not in _ANNOUNCED:
            _ANNOUNCED.add((flavour, folder))
            print(f"{flavour}: reading both splits from {folder}", flush=True)
        return found[FILES[split][0]], found[FILES[split][1]]
    if have and user_folder:
        missing = [s for s in stems if not found[s]]
        raise ValueError(f"data.root: {folder} holds only {len(have)} of the 4 {flavour} files (missing "
                         f"{', '.join(missing)}[.gz]); put all four there (one folder serves both splits) or "
                         f"point data.root elsewhere")
    return None


def locate(flavour: str, split: str, root: str | None, download: bool) -> tuple[Path, Path]:
    """The (images, labels) files of ``split``, searched as the module docstring says."""
    stems = FILES[split]
    folders = candidate_folders(flavour, root)
    for folder in folders:
        if found := _complete(folder, flavour, split, user_folder=bool(root)):
            return found
    if download:
        target = Path(root).expanduser() if root else default_download_root()
        torchvision_download(FLAVOURS[flavour]["torchvision"], target, split)
        folder = target / FLAVOURS[flavour]["torchvision"] / "raw"
        if found := _complete(folder, flavour, split, user_folder=True):
            return found
        folders.append(folder)
    if root:
        system = ", ".join(FLAVOURS[flavour]["system"])
        raise FileNotFoundError(f"data.root: {Path(root).expanduser()} holds none of the 4 {flavour} IDX files "
                                f"(looked in {', '.join(map(str, folders))}); put them there, set data.download: "
                                f"true to fetch them there, or data.root: null to read the system copy ({system})")
    debian = FLAVOURS[flavour]["debian"]
    fixes = (f"install Debian's {debian} package, " if debian else "") + \
        "set data.root to the folder holding them, or set data.download: true"
    raise FileNotFoundError(f"{flavour}: {stems[0]}[.gz] and {stems[1]}[.gz] not found in "
                            f"{', '.join(map(str, folders))}; {fixes}")


class MNISTLike(TensorImageDataset):
    """MNIST or Fashion-MNIST, 1 channel, attribute ``class``.

    Args:
        flavour: "mnist" or "fashion_mnist".
        split: "train" (60 000) or "test" (10 000).
        root: folder with the IDX files (see module docstring); None searches system locations only.
        download: fetch with torchvision when not found locally.
        image_size: 32 (default) pads the 28×28 images with black; 28 keeps them as stored; any other
            size resizes the padded 32×32 image.
        size: keep the first ``size`` examples (default all).
    """

    def __init__(self, flavour: str, split: str = "train", root: str | None = None, download: bool = False,
                 image_size: int | None = None, size: int | None = None):
        check_split(split)
        images_path, labels_path = locate(flavour, split, root, download)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images_path}: expected (N, H, W) images and N labels, got {images.shape} and "
                             f"{labels.shape}")
        classes = FLAVOURS[flavour]["classes"]
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{labels_path}: labels outside 0..{len(classes) - 1}")
        n = take_first(images.shape[0], size, f"{flavour} {split}")
        x = torch.from_numpy(images[:n].astype(np.uint8))[:, None]  # (N, 1, 28, 28)
        image_size = 32 if image_size is None else int(image_size)
        if image_size != x.shape[-1]:
            pad = max(0, 32 - x.shape[-1])  # black border to 32 (pixel value 0 -> -1 after scaling)
            x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
            x = resize_uint8(x, image_size)
        attributes = torch.from_numpy(labels[:n].astype(np.int64))[:, None]
        super().__init__(x, attributes, AttributeSchema(["class"], [classes]))
        self.files = (images_path, labels_path)
        self.resolved_root = images_path.parent  # the one folder both splits come from; runs record it
