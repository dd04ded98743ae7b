"""Pieces every dataset shares: in-memory uint8 image storage, resizing, subset selection, seeds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from latentdiff.data.schema import AttributeSchema

SPLITS = ("train", "test")


def check_split(split: str) -> int:
    """Index of ``split`` in ("train", "test"); anything else is a one-line ValueError."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return SPLITS.index(split)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """A generator for ``split`` derived from ``seed``: train and test never share a stream."""
    return np.random.default_rng([int(seed), check_split(split)])


def default_download_root() -> Path:
    """Where ``download=True`` puts files when no ``root`` is given ($LATENTDIFF_DATA overrides)."""
    return Path(os.environ.get("LATENTDIFF_DATA", Path.home() / ".cache" / "latentdiff" / "data"))


def torchvision_download(dataset: str, target: Path, split: str) -> None:
    """Fetch ``torchvision.datasets.<dataset>``'s ``split`` into ``target``; any failure is one line."""
    import torchvision

    try:
        getattr(torchvision.datasets, dataset)(str(target), train=split == "train", download=True)
    except Exception as e:  # no network, a refused mirror, a bad checksum: all need the same fix
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{dataset}: download into {target} failed ({reason}); check the internet "
                                f"connection or place the files there yourself") from None


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return images_uint8.float().div(127.5).sub(1.0)


def take_first(n_available: int, size: int | None, what: str) -> int:
    """How many examples to keep: all when ``size`` is None, else ``size`` (which must fit)."""
    if size is None:
        return n_available
    if size < 1 or size > n_available:
        raise ValueError(f"{what}: size={size} but only {n_available} examples are available; "
                         f"choose a size from 1 to {n_available}")
    return size


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8 by antialiased bilinear resampling.

    Non-square inputs are centre-cropped to a square first so nothing is stretched.
    """
    n, c, h, w = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, :, top:top + side, left:left + side]
    if side == size:
        return images.contiguous()
    out = torch.empty(n, c, size, size, dtype=torch.uint8)
    for s in range(0, n, chunk):  # chunks bound the float32 working memory
        x = images[s:s + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s:s + chunk] = y.round().clamp(0, 255).to(torch.uint8)
    return out


class TensorImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W) with labels (N, num_attrs).

    ``__getitem__(i)`` -> (float32 (C, H, W) image in [-1, 1], LongTensor (num_attrs,) labels).
    """

    def __init__(self, images: torch.Tensor, attributes: torch.Tensor, schema: AttributeSchema):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if attributes.shape != (images.shape[0], len(schema)):
            raise ValueError(f"attributes must be ({images.shape[0]}, {len(schema)}), "
                             f"got {tuple(attributes.shape)}")
        self.images = images
        self.attributes = attributes.long()
        self.schema = schema
        self.sample_shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return to_unit_range(self.images[i]), self.attributes[i]


class ImageTooLarge(OSError):
    """An image whose header announces more pixels than Pillow's decompression-bomb limit."""


def load_image(path: str | Path, image_size: int, channels: int = 3, crop: int | None = None) -> torch.Tensor:
    """An image file as (channels, image_size, image_size) uint8.

    The image is centre-cropped to a ``crop``×``crop`` square (default: its shorter side), then resized
    with PIL's antialiased bilinear filter. ``channels`` 1 converts to greyscale ("L"), 3 to RGB.
    Unreadable files raise PIL's errors (``OSError`` family), which callers turn into their messages; so
    does an image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``), found from the
    header before any pixel is decoded, as ``ImageTooLarge``.
    """
    import warnings

    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # between 1× and 2× the limit
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            import re

            n = re.search(r"\((\d+) pixels\)", str(e))
            raise ImageTooLarge(f"{path}: {n[1] + ' pixels, ' if n else ''}over Pillow's decompression-bomb limit "
                                f"of {Image.MAX_IMAGE_PIXELS} pixels") from None
    with im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        side = min(w, h) if crop is None else min(crop, w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        if side != image_size:
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(im, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())
