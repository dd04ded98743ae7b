"""Datasets with attribute schemas: ``build_dataset(name, split, ...)`` and the ``DATASETS`` registry.

Every dataset has ``.schema`` (an :class:`AttributeSchema`, possibly empty), ``.sample_shape``
((C, H, W) for images, (2,) for points), ``.attributes`` (LongTensor (N, num_attrs), read without
decoding images) and items ``(x, attrs)``: x float32 in [-1, 1] (images, CHW) or a point (2,),
attrs LongTensor (num_attrs,).
"""

from __future__ import annotations

import difflib
import inspect

from torch.utils.data import Dataset

from latentdiff.data.celeba import CelebA
from latentdiff.data.cifar10 import CIFAR10
from latentdiff.data.common import check_split
from latentdiff.data.image_folder import ImageFolder
from latentdiff.data.mnist import MNISTLike, read_idx
from latentdiff.data.schema import UNSPECIFIED, AttributeSchema
from latentdiff.data.shapes import ShapesDataset
from latentdiff.data.toys import gaussian_mixture, moons, swissroll

__all__ = ["DATASETS", "UNSPECIFIED", "AttributeSchema", "build_dataset", "dataset_names", "read_idx"]


def _points(maker):
    """A builder for a 2-D toy: they have no files and no image size."""

    def build(split, *, root=None, download=False, image_size=None, size=None, seed=0, **options):
        if image_size is not None:
            raise ValueError(f"{maker.__name__}: 2-D point data has no image_size; leave it unset")
        return maker(split, size=size, seed=seed, **options)

    build.options = maker
    return build


def _shapes(split, *, root=None, download=False, image_size=None, size=None, seed=0, **options):
    return ShapesDataset(split, size=size, image_size=image_size, seed=seed, **options)


def _mnist(flavour):
    def build(split, *, root=None, download=False, image_size=None, size=None, seed=0, **options):
        return MNISTLike(flavour, split, root=root, download=download, image_size=image_size, size=size,
                         **options)

    build.options = MNISTLike
    return build


def _files(cls):
    """A builder for a dataset read from disk; ``seed`` is unused (subsets are the first ``size`` items)."""

    def build(split, *, root=None, download=False, image_size=None, size=None, seed=0, **options):
        return cls(split, root=root, download=download, image_size=image_size, size=size, **options)

    build.options = cls
    return build


_shapes.options = ShapesDataset
DATASETS = {
    "shapes": _shapes,
    "mnist": _mnist("mnist"),
    "fashion_mnist": _mnist("fashion_mnist"),
    "cifar10": _files(CIFAR10),
    "celeba": _files(CelebA),
    "image_folder": _files(ImageFolder),
    "swissroll": _points(swissroll),
    "moons": _points(moons),
    "gaussian_mixture": _points(gaussian_mixture),
}
_COMMON = {"self", "flavour", "split", "root", "download", "image_size", "size", "seed"}


def dataset_names() -> list[str]:
    """The valid dataset names."""
    return list(DATASETS)


def dataset_options(name: str) -> list[str]:
    """The dataset-specific keyword options of ``name`` (what ``data.options`` may hold)."""
    params = inspect.signature(DATASETS[name].options).parameters
    return [p for p in params if p not in _COMMON]


def build_dataset(name: str, split: str, *, root: str | None = None, download: bool = False,
                  image_size: int | None = None, size: int | None = None, seed: int = 0,
                  **options) -> Dataset:
    """The ``split`` ("train" or "test") of dataset ``name``.

    Args:
        root: folder to look for files in (real datasets); system locations are searched after it.
        download: let torchvision fetch a missing dataset (mnist, fashion_mnist, cifar10).
        image_size: output side in pixels; None is the dataset's default (shapes/mnist/cifar10 32, celeba 64).
        size: number of examples; None is the dataset's default (shapes 50k/10k, files: all).
        seed: generation seed of the synthetic sets (train and test use different derived streams).
        options: dataset-specific keywords (see ``dataset_options(name)``).
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown dataset {name!r}; {hint}valid: {', '.join(DATASETS)}")
    check_split(split)
    valid = dataset_options(name)
    unknown = [k for k in options if k not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown option {unknown[0]!r} for dataset {name!r}; {hint}"
                         f"valid options: {', '.join(valid) or 'none'}")
    return DATASETS[name](split, root=root, download=download, image_size=image_size, size=size, seed=seed,
                          **options)
