"""Pickle-free model bundles: a folder with ``config.json``, weights as safetensors and a ``manifest.json``.

    <dir>/config.json            {"format": "latentdiff", "format_version": 2, "kind": ..., ...}
    <dir>/<name>.safetensors     flat {key: tensor} files (safetensors: a JSON header + raw little-endian
                                 buffers; reading one never runs code, unlike a pickle)
    <dir>/<sub>/...              a nested bundle (a latent diffusion model's autoencoder), manifest and all
    <dir>/manifest.json          {"format": "latentdiff", "format_version": 2, "kind": ...,
                                  "sha256": {"config.json": "<hex>", "<name>.safetensors": "<hex>", ...}}:
                                 the sha256 of every other file of the folder, nested ones included

Writing is all or nothing: the files go into a hidden sibling folder that is renamed into place at the
end, so a failed export (full disk, kill) leaves no half bundle. Loading checks the manifest first: a file
changed, missing or added since the export is one line naming it. The manifest detects accidents and
casual edits; it is not a signature (anyone can recompute it). Bundles written before the manifest
(``format_version`` 1) still load, with a one-line note.

The generic reading and writing lives here; what a kind of bundle holds is decided by its owner
(``autoencoders.models.Autoencoder.save_pretrained``, ``latentdiff.loading`` for a latent diffusion model).
Every problem with a bundle (missing, changed or extra file, newer format, not safetensors, missing, extra
or mis-shaped tensors) is one ``CheckpointError`` line naming the file, which the commands turn into exit
status 2.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from latentdiff.checkpoints import CheckpointError, free_space

FORMAT = "latentdiff"
FORMAT_VERSION = 2  # raise when a change makes old readers misread a bundle; 2: manifest.json is required
MANIFEST = "manifest.json"


def is_bundle(path: str | Path) -> bool:
    """True for a folder holding a ``config.json`` (a bundle), False for a training run folder."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors serialisation of ``tensors`` (CPU, contiguous, unshared copies); deterministic."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return safetensors_save(plain, metadata={"format": FORMAT})


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def bundle_files(kind: str, config: dict, weights: dict[str, dict[str, torch.Tensor]],
                 nested: dict[str, dict[str, bytes]] | None = None) -> dict[str, bytes]:
    """Every file of a bundle as {relative path: bytes}: one ``<name>.safetensors`` per entry of ``weights``,
    the files of each ``nested`` bundle (from this function) under its folder name, ``config.json`` (with
    format, version and ``kind``) and ``manifest.json``, the sha256 of all the others."""
    files = {f"{name}.safetensors": tensor_bytes(tensors) for name, tensors in weights.items()}
    for sub, sub_files in (nested or {}).items():
        files.update({f"{sub}/{rel}": data for rel, data in sub_files.items()})
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind}
    files["config.json"] = _json_bytes({**header, **config})
    files[MANIFEST] = _json_bytes({**header, "sha256": {rel: sha256(files[rel]) for rel in sorted(files)}})
    return files


def write_bundle(folder: str | Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (``bundle_files``) as the folder ``folder``, all at once.

    The files go into a hidden sibling ``.<name>.tmp<pid>``, each fsynced, and the sibling is renamed to
    ``folder`` at the end (an existing bundle there is replaced; an empty folder too). Any failure removes
    the sibling and the parent folders it created, so no half bundle is left, and is one CheckpointError line
    naming the file. A sibling a killed export left behind is removed by the next export to ``folder``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot export to {folder}: it is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_bundle(folder):
        raise CheckpointError(f"cannot export to {folder}: it is neither empty nor a bundle; give a new folder")
    created = [p for p in reversed(folder.parents) if not p.exists()]  # outermost first
    for stale in folder.parent.glob(f".{glob.escape(folder.name)}.tmp*") if folder.parent.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    path = folder
    try:
        tmp.mkdir(parents=True)
        for rel, data in files.items():
            path = folder / rel
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(tmp / rel, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        path = folder
        if folder.is_dir() and any(folder.iterdir()):  # an earlier bundle: swapped out, then removed
            os.replace(folder, old)
        os.replace(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not folder.exists():
            os.replace(old, folder)
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:
                pass
        raise CheckpointError(f"could not write {path}: {e.strerror or e} ({free_space(folder.parent)}); "
                              f"nothing was exported") from None
    shutil.rmtree(old, ignore_errors=True)


def read_config(folder: str | Path, kind: str) -> dict:
    """``config.json`` of a bundle of ``kind``, checked for format and version (not against the manifest:
    ``open_bundle`` does both)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: {folder} is not an exported latentdiff model "
                              f"(export one with python export.py --run RUN --out DIR)")
    config = _read_json(path)
    if config.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {config.get('kind')!r} model, not a {kind!r} one")
    return config


def bundle_kind(folder: str | Path) -> str | None:
    """The ``kind`` in a bundle's ``config.json`` ("latent_diffusion", "autoencoder"); errors as ``read_config``."""
    return _read_json(Path(folder) / "config.json").get("kind")


def _read_json(path: Path) -> dict:
    """A bundle's JSON file (config or manifest), checked for format and version."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({type(e).__name__}); re-export the model") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a latentdiff bundle file (no \"format\": \"{FORMAT}\")")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}, newer than this latentdiff reads "
                              f"({FORMAT_VERSION}); update latentdiff")
    return data


def open_bundle(folder: str | Path, kind: str, note_unsealed: bool = True) -> tuple[dict, dict[str, str] | None]:
    """``(config, {file: sha256})`` of the bundle of ``kind`` in ``folder``, once its manifest is checked.

    Every file the manifest lists must be there with that sha256, and no other file may be (nested bundles
    included): anything else is one line naming the file. A bundle written before the manifest existed
    (format_version 1, no manifest.json) loads unchecked, with a one-line note when ``note_unsealed``; the
    hashes are then None.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        config = read_config(folder, kind)
        if config["format_version"] >= 2:
            raise CheckpointError(f"{manifest_path} is missing, so the bundle's files cannot be checked; "
                                  f"export the model again")
        if note_unsealed:
            print(f"note: {folder} has no {MANIFEST} (exported before bundles were sealed), so its files are not "
                  f"checked: export again to seal it", file=sys.stderr, flush=True)
        return config, None
    listed = _read_json(manifest_path).get("sha256")
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise CheckpointError(f"{manifest_path} has no \"sha256\" table of files; re-export the model")
    hashes = {}
    # a changed nested manifest follows from a changed file beside it: name the file, so check manifests last
    for rel in sorted(listed, key=lambda rel: (rel.rsplit("/", 1)[-1] == MANIFEST, rel)):
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the bundle ({MANIFEST} lists it); re-export the model")
        hashes[rel] = sha256(path.read_bytes())
        if hashes[rel] != listed[rel]:
            raise CheckpointError(f"{path} changed since the bundle was exported (sha256 {hashes[rel][:12]}, "
                                  f"{MANIFEST} records {listed[rel][:12]}); re-export the model")
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if not p.is_dir() and p != manifest_path and p.relative_to(folder).as_posix() not in listed)
    if extra:
        more = f" (and {len(extra) - 1} more files)" if len(extra) > 1 else ""
        raise CheckpointError(f"{folder / extra[0]}{more} is not part of the bundle ({MANIFEST} does not list it); "
                              f"remove it or re-export the model")
    return read_config(folder, kind), hashes


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
