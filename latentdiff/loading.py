"""Trained models from disk and back: the one home of checkpoint-to-object code and of export.

Two on-disk forms of a trained latent diffusion model:

    a run folder   runs/<name>/checkpoints/{last,best}.pt   train_diffusion.py's checkpoints (everything
                   runs/<name>/autoencoder/                 needed to resume), plus the frozen stage one it
                                                            was trained on, as a bundle (below)
    a bundle       <dir>/config.json                        what rebuilds the model: diffusion, denoiser,
                   <dir>/denoiser.safetensors               latent shape, normaliser, attribute schema,
                   <dir>/normaliser.safetensors             sampling defaults, the training data section
                   <dir>/autoencoder/{config.json,          (informational: evaluation reads its test split)
                                      model.safetensors}
                   <dir>/attribute_prior.safetensors        conditional models: the training split's attribute
                                                            combinations and counts (``AttributePrior``)
                   <dir>/guide.safetensors                  runs with train.guide_at: the autoguidance guide (the
                                                            run's EMA at that step, the denoiser's architecture)
                   <dir>/manifest.json                      the sha256 of every other file (``latentdiff.bundle``)

A bundle's config.json records the sha256 of the autoencoder weights the diffusion was trained on
(``autoencoder_hash``, the run's ``copy_hash``), and its manifest covers config.json: so an autoencoder/
folder swapped for another one is refused even when someone rewrote the manifests to match it.

A run folder is self-contained: it loads from any working directory, after being moved or copied, and after
the stage-one run is deleted. A bundle holds no pickle at all (``latentdiff.bundle``). Loading reads only the
sections sampling needs, so training-only paths (``ae.run``, ``data.root``) are never validated here.

Dependencies run one way: ``pipeline`` (LatentDiffusion) → ``loading`` → ``builders`` → configs and nets.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

from autoencoders.models import Autoencoder, build_autoencoder
from latentdiff.builders import build_autoencoder_from_config, build_denoiser, build_diffusion
from latentdiff.bundle import (
    bundle_files,
    load_module_weights,
    open_bundle,
    read_tensors,
    sha256,
    tensor_bytes,
    write_bundle,
)
from latentdiff.checkpoints import CheckpointError, load_checkpoint
from latentdiff.conditioning import AttributePrior
from latentdiff.config import AEModelConfig, DenoiserConfig, DiffusionConfig, SampleConfig, from_dict, to_dict
from latentdiff.data.schema import AttributeSchema
from latentdiff.latents import LatentNormaliser, file_hash

AE_COPY = "autoencoder"  # the stage-one bundle inside a stage-two run folder (and inside an exported bundle)
LDM_KIND = "latent_diffusion"
PRIOR_FILE = "attribute_prior"  # <bundle>/attribute_prior.safetensors: the training data's attribute combinations
GUIDE_FILE = "guide"  # <bundle>/guide.safetensors: the autoguidance guide (train.guide_at)


def checkpoint_weights(state: dict, use_ema: bool) -> dict:
    """A checkpoint's EMA weights (when asked and present), else its raw weights."""
    return state["ema"]["module"] if use_ema and state.get("ema") else state["model"]


def load_weights(module: nn.Module, state: dict, use_ema: bool, what: str) -> None:
    """Load a checkpoint's EMA weights (when asked and present) or raw weights into ``module``."""
    weights = checkpoint_weights(state, use_ema)
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{what}: weights do not fit the architecture in its config "
                              f"({str(e).splitlines()[0][:120]})") from None


def load_autoencoder(path: str | Path, use_ema: bool = True, device="cpu") -> Autoencoder:
    """A frozen autoencoder (EMA weights where present) from a stage-one checkpoint file."""
    return autoencoder_from_checkpoint(load_checkpoint(path, map_location="cpu"), use_ema, device, what=str(path))


def autoencoder_from_checkpoint(state: dict, use_ema: bool = True, device="cpu", what: str = "this checkpoint"
                                ) -> Autoencoder:
    """A frozen autoencoder from a stage-one checkpoint dict (``what``: its file, for errors)."""
    task_state = state.get("task", {})
    if "sample_shape" not in task_state:
        raise CheckpointError(f"{what} is not a stage-one (autoencoder) checkpoint")
    model_cfg = from_dict(AEModelConfig, state["config"].get("model"), prefix="model.")
    model = build_autoencoder_from_config(model_cfg, tuple(task_state["sample_shape"]))
    load_weights(model, state, use_ema, what=what)
    return model.to(device).eval().requires_grad_(False)


def autoencoder_copy_hash(autoencoder: Autoencoder) -> str:
    """sha256 of the ``model.safetensors`` that ``write_autoencoder_copy`` writes for ``autoencoder``."""
    return sha256(tensor_bytes(autoencoder.state_dict()))


def write_autoencoder_copy(autoencoder: Autoencoder, run_dir: str | Path) -> str:
    """Write the frozen stage one into ``run_dir/autoencoder/`` and return its weights' hash.

    Called when stage two starts, so the run carries the exact weights it is trained on. An existing copy
    is kept when it holds the same weights, and is an error when it holds others (the run folder belongs
    to a run on another autoencoder).
    """
    digest = check_autoencoder_copy(autoencoder, run_dir)
    if not (Path(run_dir) / AE_COPY / "model.safetensors").is_file():
        autoencoder.save_pretrained(Path(run_dir) / AE_COPY)
    return digest


def check_autoencoder_copy(autoencoder: Autoencoder, run_dir: str | Path) -> str:
    """``autoencoder``'s copy hash, after checking that ``run_dir``'s copy (if any) holds the same weights: a run
    continues on the stage one it was trained on. Cheap (no latent is encoded), so stage two calls it first."""
    folder = Path(run_dir) / AE_COPY
    digest = autoencoder_copy_hash(autoencoder)
    weights = folder / "model.safetensors"
    if weights.is_file() and (existing := file_hash(weights)) != digest:
        raise CheckpointError(f"{folder} holds the autoencoder this run was trained on (hash {existing[:12]}), "
                              f"ae.run gives another ({digest[:12]}); point ae.run at the stage-one run it was "
                              f"trained on, or pick a new name=... to train on this one")
    return digest


def _checkpoint_file(run_dir: Path, checkpoint: str) -> Path | None:
    """``run_dir/checkpoints/<checkpoint>.pt`` where it exists ("best" falls back to "last": runs that never
    evaluated have no best), else None."""
    for name in (checkpoint, "last") if checkpoint == "best" else (checkpoint,):
        path = run_dir / "checkpoints" / f"{name}.pt"
        if path.exists():
            return path
    return None


def run_checkpoint(run_dir: str | Path, checkpoint: str = "last") -> Path:
    """The checkpoint file of a training run folder (stage one or two), or one line saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist; give a train_diffusion.py run folder or an exported "
                                f"model folder")
    path = _checkpoint_file(run_dir, checkpoint)
    if path is None:
        raise CheckpointError(f"{run_dir} holds neither checkpoints/{checkpoint}.pt nor an exported model "
                              f"(config.json); give a train_diffusion.py run folder or an export.py folder")
    return path


def autoencoder_checkpoint(run: str | Path, checkpoint: str = "best") -> Path:
    """``ae.run``: a stage-one run folder's ``checkpoints/{best,last}.pt``, or a .pt path given directly."""
    run = Path(run)
    if run.suffix == ".pt":
        return run
    path = _checkpoint_file(run, checkpoint)
    if path is None:
        raise CheckpointError(f"ae.run: {run} holds no autoencoder checkpoint (checkpoints/{checkpoint}.pt is "
                              f"missing); train one with train_ae.py first")
    return path


def autoencoder_of_run(ae: dict, run_dir: Path | None, device) -> Autoencoder:
    """The stage one a diffusion checkpoint names: its copy in the run folder, or (older runs) its path."""
    if ae.get("copy") and run_dir is not None:
        folder = run_dir / ae["copy"]
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{folder} is missing: this run's copy of its autoencoder was deleted; restore "
                                  f"it from a backup of the run folder")
        actual = file_hash(weights)
        if actual != ae["copy_hash"]:
            raise CheckpointError(f"{weights} changed since this diffusion run was trained (hash {actual[:12]} "
                                  f"!= {ae['copy_hash'][:12]}); restore the run's own autoencoder/ folder")
        return Autoencoder.from_pretrained(folder, device=device, note_unsealed=False)  # weights checked above
    path = Path(ae["path"])
    check_autoencoder_identity(path, ae["hash"])
    print(f"note: this run points at its autoencoder by absolute path ({path}); make it portable with "
          f"python export.py --run {run_dir} --out <folder>", file=sys.stderr)
    return load_autoencoder(path, use_ema=ae.get("use_ema", True), device=device)


def check_autoencoder_identity(path: str | Path, expected_hash: str) -> None:
    """The autoencoder a diffusion run was trained on must be the one loaded now."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"the autoencoder checkpoint {path} this diffusion run was trained on is missing; "
                              f"restore it or retrain the diffusion with ae.run=<its run>")
    actual = file_hash(path)
    if actual != expected_hash:
        raise CheckpointError(f"the autoencoder checkpoint {path} changed since this diffusion run was trained "
                              f"(hash {actual[:12]} != {expected_hash[:12]}); retrain the diffusion on it")


def _assemble(config: dict, latent_shape: tuple, num_values, schema_state, normaliser: LatentNormaliser,
              denoiser_weights, autoencoder, device, what: str, prior_state: dict | None = None,
              guide_weights=None) -> dict:
    """The constructor arguments of ``LatentDiffusion`` from the sections sampling needs.

    ``denoiser_weights`` / ``guide_weights``: fill a freshly built denoiser with the model's / the autoguidance
    guide's weights (the guide has the model's architecture: it is the run's EMA at ``train.guide_at``)."""
    diffusion_cfg = from_dict(DiffusionConfig, config.get("diffusion"), prefix="diffusion.")
    denoiser_cfg = from_dict(DenoiserConfig, config.get("denoiser"), prefix="denoiser.")
    from_dict(SampleConfig, config.get("sample"), prefix="sample.")  # validated here, read by sampling_settings
    denoiser = build_denoiser(denoiser_cfg, latent_shape, num_values)
    denoiser_weights(denoiser)
    if autoencoder is not None and tuple(autoencoder.latent_shape) != latent_shape:
        raise CheckpointError(f"{what}: its autoencoder has latents {tuple(autoencoder.latent_shape)}, the "
                              f"diffusion was trained on {latent_shape}")
    schema = AttributeSchema.from_dict(schema_state) if schema_state else None
    try:
        prior = AttributePrior.from_state(prior_state) if prior_state else None
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{what}: its attribute prior is damaged ({e}); re-export or retrain") from None
    if prior is not None and num_values is not None and prior.rows.shape[1] != len(num_values):
        raise CheckpointError(f"{what}: its attribute prior has {prior.rows.shape[1]} attributes, the denoiser "
                              f"{len(num_values)}")
    guide = None
    if guide_weights is not None:
        guide = build_denoiser(denoiser_cfg, latent_shape, num_values)
        guide_weights(guide)
        guide = guide.to(device).eval()
    return dict(diffusion=build_diffusion(diffusion_cfg), denoiser=denoiser.to(device).eval(),
                autoencoder=autoencoder, normaliser=normaliser, latent_shape=latent_shape, schema=schema,
                config=config, attribute_prior=prior, guide=guide)


def ldm_parts_from_run(run_dir: str | Path, checkpoint: str = "last", use_ema: bool = True,
                       device="cpu") -> dict:
    """``LatentDiffusion`` constructor arguments from a ``train_diffusion.py`` run folder."""
    path = run_checkpoint(run_dir, checkpoint)
    return ldm_parts_from_checkpoint(load_checkpoint(path, map_location=device), Path(run_dir), use_ema, device)


def ldm_parts_from_checkpoint(state: dict, run_dir: Path | None = None, use_ema: bool = True,
                              device="cpu") -> dict:
    """``LatentDiffusion`` constructor arguments from a stage-two checkpoint dict (see ``train_diffusion.py``).

    ``run_dir``: the run folder the checkpoint lives in, where its autoencoder copy is.
    """
    task_state = state.get("task", {})
    if "latent_shape" not in task_state:
        raise CheckpointError("this is not a stage-two (diffusion) checkpoint; sampling needs a "
                              "train_diffusion.py run")
    config = state["config"]
    num_values = task_state.get("num_values") if config.get("conditioning", {}).get("enabled") else None
    ae, joint = task_state.get("ae"), task_state.get("joint")
    if joint:  # train_joint.py: the autoencoder is trained too, so its weights live in the checkpoint
        weights = checkpoint_weights(state, use_ema)
        autoencoder = joint_autoencoder(joint["autoencoder"], weights, f"{run_dir}: its autoencoder", device)
        denoiser_weights = partial(load_module_weights, tensors=submodule(weights, "denoiser"),
                                   path=f"{run_dir}: its denoiser")
    else:
        autoencoder = autoencoder_of_run(ae, run_dir, device) if ae else None
        denoiser_weights = partial(load_weights, state=state, use_ema=use_ema, what="the denoiser checkpoint")
    return _assemble(config, tuple(task_state["latent_shape"]), num_values, task_state.get("schema"),
                     LatentNormaliser.from_state(task_state["normaliser"]), denoiser_weights,
                     autoencoder, device, what=str(run_dir), prior_state=task_state.get("attribute_prior"),
                     guide_weights=None if state.get("guide") is None else
                     lambda module: load_module_weights(module, state["guide"], f"{run_dir}: its guide"))


def submodule(weights: dict, name: str) -> dict:
    """The entries of a ``JointModel`` state dict under ``name.``, with that prefix removed."""
    return {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")}


def joint_autoencoder(config: dict, weights: dict, what: str, device) -> Autoencoder:
    """The frozen autoencoder of a joint run: built from its ``config`` (``Autoencoder.config``), filled with the
    ``autoencoder.*`` entries of the run's (EMA) weights."""
    try:
        model = build_autoencoder(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: its config does not describe an autoencoder ({e})") from None
    load_module_weights(model, submodule(weights, "autoencoder"), what)
    return model.to(device).eval().requires_grad_(False)


def ldm_parts_from_bundle(folder: str | Path, device="cpu") -> dict:
    """``LatentDiffusion`` constructor arguments from a ``save_pretrained`` folder, its manifest and its
    autoencoder's identity checked; never unpickles."""
    folder = Path(folder)
    config, hashes = open_bundle(folder, LDM_KIND)
    try:
        latent_shape = tuple(int(n) for n in config["latent_shape"])
        num_values, schema_state, ae_folder = config["num_values"], config["schema"], config["autoencoder"]
        trained_on = config["autoencoder_hash"] if hashes is not None and ae_folder else None  # sealed bundles
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'} lacks or garbles {e}; re-export the model") from None
    ae_weights = f"{ae_folder}/model.safetensors"
    if trained_on is not None and hashes.get(ae_weights) != trained_on:
        raise CheckpointError(f"{folder / ae_weights} is not the autoencoder this diffusion model was trained on "
                              f"(sha256 {str(hashes.get(ae_weights))[:12]} != {str(trained_on)[:12]} in "
                              f"config.json); export the model again from its run")
    norm = read_tensors(folder / "normaliser.safetensors")
    if set(norm) != {"shift", "scale"}:
        raise CheckpointError(f"{folder / 'normaliser.safetensors'} must hold exactly 'shift' and 'scale', "
                              f"it holds {sorted(norm)}")
    autoencoder = (Autoencoder.from_pretrained(folder / ae_folder, device=device, note_unsealed=False)
                   if ae_folder else None)  # an unsealed bundle was noted above, once
    weights_path = folder / "denoiser.safetensors"
    weights = read_tensors(weights_path)
    prior_file = config.get("attribute_prior")  # absent in bundles exported before the prior existed
    prior_state = read_tensors(folder / f"{prior_file}.safetensors") if prior_file else None
    guide_path = folder / f"{config['guide']}.safetensors" if config.get("guide") else None  # absent before guides
    guide_tensors = read_tensors(guide_path) if guide_path is not None else None
    return _assemble(config, latent_shape, num_values, schema_state,
                     LatentNormaliser(shift=norm["shift"], scale=norm["scale"]),
                     lambda module: load_module_weights(module, weights, weights_path), autoencoder, device,
                     what=str(folder), prior_state=prior_state,
                     guide_weights=None if guide_tensors is None else
                     lambda module: load_module_weights(module, guide_tensors, guide_path))


def save_ldm_bundle(ldm, folder: str | Path) -> None:
    """Write ``ldm`` (a ``LatentDiffusion``) as a pickle-free bundle (see the module docstring)."""
    folder = Path(folder)
    if folder.is_dir() and (folder / "checkpoints").is_dir():
        raise CheckpointError(f"{folder} is a training run folder; export into a new folder")
    config = {key: ldm.config[key] for key in ("diffusion", "denoiser", "sample", "data", "conditioning", "name")
              if key in ldm.config}
    config["diffusion"] = to_dict(from_dict(DiffusionConfig, config.get("diffusion")))  # every key, explicit
    config["denoiser"] = to_dict(from_dict(DenoiserConfig, config.get("denoiser")))
    config["sample"] = to_dict(from_dict(SampleConfig, config.get("sample")))
    num_values = ldm.num_values
    config.update(latent_shape=list(ldm.latent_shape), num_values=num_values,
                  schema=ldm.schema.to_dict() if ldm.schema is not None else None,
                  autoencoder=AE_COPY if ldm.autoencoder is not None else None,
                  attribute_prior=PRIOR_FILE if ldm.attribute_prior is not None else None,
                  guide=GUIDE_FILE if ldm.guide is not None else None)
    nested = {AE_COPY: ldm.autoencoder.bundle_files()} if ldm.autoencoder is not None else {}
    config["autoencoder_hash"] = sha256(nested[AE_COPY]["model.safetensors"]) if nested else None
    normaliser = {k: torch.as_tensor(v) for k, v in ldm.normaliser.state().items()}
    tensors = {"denoiser": ldm.denoiser.state_dict(), "normaliser": normaliser}
    if ldm.attribute_prior is not None:
        tensors[PRIOR_FILE] = ldm.attribute_prior.state()
    if ldm.guide is not None:
        tensors[GUIDE_FILE] = ldm.guide.state_dict()
    write_bundle(folder, bundle_files(LDM_KIND, config, tensors, nested))
