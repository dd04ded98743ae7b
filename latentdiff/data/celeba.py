"""CelebA in torchvision's folder layout, read without torchvision or gdown.

    <root>/celeba/img_align_celeba/000001.jpg ...
    <root>/celeba/list_attr_celeba.txt      count; 40 attribute names; "<file> ±1 × 40" per image
    <root>/celeba/list_eval_partition.txt   "<file> <0 train | 1 valid | 2 test>" per image

Images are loaded lazily (200k files do not fit comfortably in memory), centre-cropped to 148×148
(the face region commonly used since Larsen et al., 2016) and resized to ``image_size`` (64 default).
Attributes: the 40 binary CelebA attributes, names lower-cased (``smiling``, ``male``, ...), ±1 -> 1/0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from latentdiff.data.common import check_split, load_image, take_first, to_unit_range
from latentdiff.data.schema import AttributeSchema

PARTITIONS = {"train": 0, "test": 2}
SYSTEM_ROOTS = ["/usr/share/datasets/celeba"]


def read_attribute_file(path: Path) -> tuple[list[str], list[str], torch.Tensor]:
    """``list_attr_celeba.txt`` -> (attribute names, file names, (N, A) LongTensor of 0/1)."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a header of attribute names")
    names = lines[1].split()
    files, rows = [], []
    for k, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or any(p not in ("1", "-1") for p in parts[1:]):
            raise ValueError(f"{path}:{k}: expected a file name and {len(names)} values of 1/-1")
        files.append(parts[0])
        rows.append([p == "1" for p in parts[1:]])
    return names, files, torch.tensor(rows, dtype=torch.long).reshape(len(rows), len(names))


def read_partition_file(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt`` -> {file name: partition}."""
    out = {}
    for k, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{k}: expected '<file> <0|1|2>'")
        out[parts[0]] = int(parts[1])
    return out


def locate(root: str | None) -> Path:
    """The ``celeba`` folder: ``<root>/celeba``, ``<root>`` itself, then system locations."""
    roots = ([Path(root).expanduser()] if root else []) + [Path(p) for p in SYSTEM_ROOTS]
    folders = [f for r in roots for f in (r / "celeba", r)]
    needed = ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt")
    for folder in folders:
        if all((folder / n).exists() for n in needed):
            return folder
    raise FileNotFoundError(f"celeba: {', '.join(needed)} not found together in "
                            f"{', '.join(map(str, folders))}; download CelebA (Aligned&Cropped) and set "
                            f"data.root to the folder holding celeba/")


class CelebA(Dataset):
    """CelebA faces with 40 binary attributes.

    Args:
        split: "train" (partition 0) or "test" (partition 2).
        root: folder holding ``celeba/`` (or the ``celeba`` folder itself).
        download: not supported (Google Drive quotas break automatic downloads); a clear error says so.
        image_size: output side (default 64).
        size: keep the first ``size`` images of the split (default all).
        crop: side of the centre crop before resizing (default 148).
    """

    def __init__(self, split: str = "train", root: str | None = None, download: bool = False,
                 image_size: int | None = None, size: int | None = None, crop: int = 148):
        check_split(split)
        try:
            self.folder = locate(root)
        except FileNotFoundError as e:
            if download:
                raise FileNotFoundError(f"{e} (download: true cannot fetch CelebA: its Google Drive host "
                                        f"refuses scripted downloads)") from None
            raise
        names, files, attrs = read_attribute_file(self.folder / "list_attr_celeba.txt")
        partition = read_partition_file(self.folder / "list_eval_partition.txt")
        missing = [f for f in files if f not in partition]
        if missing:
            raise ValueError(f"celeba: {len(missing)} images of list_attr_celeba.txt have no partition in "
                             f"list_eval_partition.txt (first: {missing[0]})")
        keep = [i for i, f in enumerate(files) if partition[f] == PARTITIONS[split]]
        n = take_first(len(keep), size, f"celeba {split}")
        keep = keep[:n]
        self.files = [self.folder / "img_align_celeba" / files[i] for i in keep]
        self.attributes = attrs[keep]
        self.schema = AttributeSchema([a.lower() for a in names], [None] * len(names))
        self.image_size = 64 if image_size is None else int(image_size)
        self.crop = int(crop)
        self.sample_shape = (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        try:
            image = load_image(path, self.image_size, channels=3, crop=self.crop)
        except FileNotFoundError:
            message = f"celeba: {path} is listed but missing; re-extract img_align_celeba"
            raise FileNotFoundError(message) from None
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files
            raise ValueError(f"celeba: cannot read {path} ({type(e).__name__}); re-extract "
                             f"img_align_celeba") from None
        return to_unit_range(image), self.attributes[i]
