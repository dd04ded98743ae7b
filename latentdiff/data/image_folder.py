"""Any folder of images (searched recursively), with optional attributes from a CSV file.

Every image is decoded once at construction, centre-cropped to a square, resized to ``image_size``
and held in memory as uint8, so unreadable files are found up front: skipped and counted (one
warning) or an error, by ``on_bad_file``.

CSV: a header row, one column naming the file (path relative to the folder, or a bare file name)
and one column per attribute. A column whose values are all 0/1 becomes a binary attribute; any
other column is categorical with its distinct values, sorted (numbers by value), as value names.
Empty cells are "unspecified" (-1); a row with more or fewer cells than the header is an error naming its line.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import torch

from latentdiff.data.common import TensorImageDataset, check_split, load_image
from latentdiff.data.schema import UNSPECIFIED, AttributeSchema

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (any depth), by extension, sorted for a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _numeric_first(value: str) -> tuple:
    """Sort key: numbers by value ("2" before "10"), then other strings alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def read_attribute_csv(path: Path, filename_column: str) -> tuple[AttributeSchema, dict[str, list[int]]]:
    """(schema, {file key: label row}) from a CSV as the module docstring describes."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = [], list(reader.fieldnames or [])
        for r in reader:  # a row of another length than the header would shift or drop attributes
            if None in r or None in r.values():
                cells = len(columns) + len(r.get(None, [])) - sum(v is None for v in r.values())
                raise ValueError(f"{path}:{reader.line_num}: {cells} cells where the header has {len(columns)}; "
                                 f"give every row one cell per column (an empty cell is unspecified)")
            rows.append(r)
    if filename_column not in columns:
        raise ValueError(f"{path}: no {filename_column!r} column (columns: {', '.join(columns) or 'none'}); "
                         f"set the image_folder option filename_column")
    names = [c for c in columns if c != filename_column]
    values = []
    for name in names:
        seen = {r[name].strip() for r in rows if r[name] is not None and r[name].strip() != ""}
        values.append(None if seen <= {"0", "1"} else sorted(seen, key=_numeric_first))
    schema = AttributeSchema(names, values)
    labels = {}
    for r in rows:
        cells = [(r[n] or "").strip() for n in names]
        labels[r[filename_column].strip()] = [UNSPECIFIED if c == "" else schema.index(n, c)
                                              for n, c in zip(names, cells)]
    return schema, labels


class ImageFolder(TensorImageDataset):
    """Images of a folder as (C, image_size, image_size) in [-1, 1], with CSV attributes when given.

    Args:
        split: "train" or "test"; with ``test_fraction`` > 0 the sorted files are split
            deterministically (every k-th file goes to test), otherwise both splits are the whole folder.
        root: the folder (required).
        image_size: output side (default 64).
        size: keep the first ``size`` images (default all).
        channels: 1 (greyscale) or 3 (RGB).
        attributes_csv: CSV file (absolute, or relative to ``root``), or None for no attributes.
        filename_column: the CSV column naming each image.
        on_bad_file: "skip" (count, warn once) or "error" for files that do not decode.
        test_fraction: share of files held out for "test" (0 = none held out).
        download: must stay False (a local folder has nothing to fetch).
    """

    def __init__(self, split: str = "train", root: str | None = None, image_size: int | None = None,
                 size: int | None = None, channels: int = 3, attributes_csv: str | None = None,
                 filename_column: str = "filename", on_bad_file: str = "skip", test_fraction: float = 0.0,
                 download: bool = False):
        check_split(split)
        if download:
            raise ValueError("image_folder: there is nothing to download; set data.download: false")
        if root is None:
            raise ValueError("image_folder: set data.root to the folder of images")
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"image_folder: {folder} is not a folder; set data.root to a folder "
                                    f"of images")
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"image_folder: on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"image_folder: test_fraction must be in [0, 1), got {test_fraction}")
        if channels not in (1, 3):
            raise ValueError(f"image_folder: channels must be 1 or 3, got {channels}")
        image_size = 64 if image_size is None else int(image_size)
        files = list_images(folder)
        if not files:
            raise FileNotFoundError(f"image_folder: no {'/'.join(EXTENSIONS)} files under {folder}")
        if test_fraction > 0:  # every k-th file is a test file: a deterministic, evenly spread hold-out
            every = max(2, round(1 / test_fraction))
            files = [f for k, f in enumerate(files) if (k % every == every - 1) == (split == "test")]
        schema, labels = AttributeSchema([], []), None
        if attributes_csv is not None:
            csv_path = Path(attributes_csv).expanduser()
            csv_path = csv_path if csv_path.is_absolute() else folder / csv_path
            if not csv_path.is_file():
                raise FileNotFoundError(f"image_folder: attributes_csv {csv_path} does not exist")
            schema, labels = read_attribute_csv(csv_path, filename_column)
        images, rows, bad = [], [], []
        for path in files:
            if size is not None and len(images) == size:
                break
            row = []
            if labels is not None:
                key = path.relative_to(folder).as_posix()
                row = labels.get(key, labels.get(path.name))
                if row is None:
                    raise ValueError(f"image_folder: {key} has no row in {csv_path}; add one or remove "
                                     f"the image")
            try:
                images.append(load_image(path, image_size, channels))
            except OSError as e:  # PIL's UnidentifiedImageError, truncated data
                if on_bad_file == "error":
                    raise ValueError(f"image_folder: cannot decode {path} ({type(e).__name__}); remove it or "
                                     f"set on_bad_file: skip") from None
                bad.append(path)
                continue
            rows.append(row)
        if bad:
            warnings.warn(f"image_folder: skipped {len(bad)} unreadable file(s) under {folder} "
                          f"(first: {bad[0].name})", stacklevel=2)
        if not images:
            raise ValueError(f"image_folder: no readable images for split {split!r} under {folder}")
        if size is not None and len(images) < size:
            raise ValueError(f"image_folder: size={size} but only {len(images)} readable images for "
                             f"{split!r}")
        attributes = torch.tensor(rows, dtype=torch.long).reshape(len(images), len(schema))
        super().__init__(torch.stack(images), attributes, schema)
        skipped = set(bad)
        self.files = [p for p in files if p not in skipped][:len(images)]
        self.skipped = bad
