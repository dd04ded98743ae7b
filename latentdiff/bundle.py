"""Pickle-free model bundles: a folder with ``config.json`` and weights as safetensors.

    <dir>/config.json            {"format": "latentdiff", "format_version": 1, "kind": ..., ...}
    <dir>/<name>.safetensors     flat {key: tensor} files (safetensors: a JSON header + raw little-endian
                                 buffers; reading one never runs code, unlike a pickle)

The generic reading and writing lives here; what a kind of bundle holds is decided by its owner
(``autoencoders.models.Autoencoder.save_pretrained``, ``latentdiff.loading`` for a latent diffusion model).
Every problem with a bundle (missing file, newer format, not safetensors, missing, extra or mis-shaped
tensors) is one ``CheckpointError`` line naming the file, which the commands turn into exit status 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from latentdiff.checkpoints import CheckpointError

FORMAT = "latentdiff"
FORMAT_VERSION = 1  # raise when a change makes old readers misread a bundle


def is_bundle(path: str | Path) -> bool:
    """True for a folder holding a ``config.json`` (a bundle), False for a training run folder."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {e.strerror or e}") from None


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors serialisation of ``tensors`` (CPU, contiguous, unshared copies); deterministic."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return safetensors_save(plain, metadata={"format": FORMAT})


def write_bundle(folder: str | Path, kind: str, config: dict, weights: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write ``config.json`` (with format, version and ``kind``) and one ``<name>.safetensors`` per entry.

    Each file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot export to {folder}: it is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensors in weights.items():
        _atomic_write(folder / f"{name}.safetensors", tensor_bytes(tensors))
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, **config}
    _atomic_write(folder / "config.json", (json.dumps(header, indent=2) + "\n").encode())


def read_config(folder: str | Path, kind: str) -> dict:
    """``config.json`` of a bundle of ``kind``, checked for format and version."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: {folder} is not an exported latentdiff model "
                              f"(export one with python export.py --run RUN --out DIR)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({type(e).__name__}); re-export the model") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a latentdiff bundle config (no \"format\": \"{FORMAT}\")")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}, newer than this latentdiff reads "
                              f"({FORMAT_VERSION}); update latentdiff")
    if config.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {config.get('kind')!r} model, not a {kind!r} one")
    return config


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file as {key: tensor} on the CPU; anything else is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the bundle; re-export the model")
    try:
        return safetensors_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a safetensors file ({first}); re-export the model") from None


def load_module_weights(module: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``tensors`` into ``module`` strictly: missing, extra and mis-shaped keys are one line each."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} tensors missing (first: {missing[0]}); re-export the model")
    if extra:
        raise CheckpointError(f"{path}: {len(extra)} unexpected tensors (first: {extra[0]}); it belongs to "
                              f"another architecture than config.json describes")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: tensor {key} has shape {tuple(value.shape)}, the architecture in "
                                  f"config.json needs {tuple(expected[key].shape)}")
    module.load_state_dict(tensors)
