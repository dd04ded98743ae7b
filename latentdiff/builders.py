"""Explicit constructors from config sections to objects, shared by the commands and ``from_run``."""

from __future__ import annotations

from pathlib import Path

import torch

from latentdiff.config import AERunConfig, DataConfig, DenoiserConfig, DiffusionConfig, LDMRunConfig, from_dict
from latentdiff.training import CheckpointError, load_checkpoint


def build_data(cfg: DataConfig, split: str):
    """The dataset of ``split`` ("train" or "test") described by the ``data`` section."""
    from latentdiff.data import build_dataset

    size = cfg.train_size if split == "train" else cfg.test_size
    return build_dataset(cfg.name, split, root=cfg.root, download=cfg.download, image_size=cfg.image_size,
                         size=size, seed=cfg.seed, **cfg.options)


def build_autoencoder_from_config(cfg: AERunConfig, sample_shape: tuple):
    """The stage-one model for images of ``sample_shape`` (C, H, W)."""
    from autoencoders import build_autoencoder

    m = cfg.model
    return build_autoencoder(m.kind, in_channels=sample_shape[0], image_size=sample_shape[-1],
                             base_channels=m.base_channels, channel_mults=tuple(m.channel_mults),
                             num_res_blocks=m.num_res_blocks, latent_channels=m.latent_channels,
                             latent_dim=m.latent_dim, attention=m.attention, dropout=m.dropout,
                             spectral_norm=m.spectral_norm)


def autoencoder_checkpoint(run: str | Path, checkpoint: str = "best") -> Path:
    """``runs/<ae>/checkpoints/{best,last}.pt`` (best falls back to last), or a .pt path given directly."""
    run = Path(run)
    if run.suffix == ".pt":
        return run
    path = run / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists() and checkpoint == "best":
        path = run / "checkpoints" / "last.pt"
    if not path.exists():
        raise CheckpointError(f"ae.run: {run} holds no autoencoder checkpoint ({path} is missing); "
                              f"train one with train_ae.py first")
    return path


def load_weights(module, state: dict, use_ema: bool, what: str) -> None:
    """Load a checkpoint's EMA weights (when asked and present) or raw weights into ``module``."""
    weights = state["ema"]["module"] if use_ema and state.get("ema") else state["model"]
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{what}: weights do not fit the architecture in its config "
                              f"({str(e).splitlines()[0][:120]})") from None


def load_autoencoder(path: str | Path, use_ema: bool = True, device="cpu"):
    """A frozen autoencoder (EMA weights where present) from a stage-one checkpoint file."""
    state = load_checkpoint(path, map_location="cpu")
    task_state = state.get("task", {})
    if "sample_shape" not in task_state:
        raise CheckpointError(f"{path} is not a stage-one (autoencoder) checkpoint")
    cfg = from_dict(AERunConfig, state["config"])
    model = build_autoencoder_from_config(cfg, tuple(task_state["sample_shape"]))
    load_weights(model, state, use_ema, what=str(path))
    model.sample_shape = tuple(task_state["sample_shape"])  # the images it was trained on
    return model.to(device).eval().requires_grad_(False)


def build_diffusion(cfg: DiffusionConfig):
    from latentdiff.diffusion import GaussianDiffusion

    return GaussianDiffusion(num_timesteps=cfg.num_timesteps, beta_schedule=cfg.beta_schedule,
                             beta_start=cfg.beta_start, beta_end=cfg.beta_end, variance=cfg.variance,
                             prediction=cfg.prediction, loss_weighting=cfg.loss_weighting,
                             min_snr_gamma=cfg.min_snr_gamma)


def build_denoiser(cfg: DenoiserConfig, latent_shape: tuple, num_values: list[int] | None = None):
    """UNet for (C, H, W) latents, residual MLP for vectors; wrapped for attributes when ``num_values``."""
    from latentdiff.conditioning import ConditionalDenoiser
    from latentdiff.nets import MLPDenoiser, UNet

    kind = cfg.kind if cfg.kind != "auto" else ("unet" if len(latent_shape) == 3 else "mlp")
    if kind == "unet" and len(latent_shape) != 3:
        raise ValueError(f"denoiser.kind: a unet needs C×H×W latents, these are {tuple(latent_shape)}; use mlp")
    cond_dim = (cfg.channels * 4 if kind == "unet" else cfg.hidden) if num_values else None
    if kind == "unet":
        net = UNet(in_channels=latent_shape[0], channels=cfg.channels, channel_mults=tuple(cfg.channel_mults),
                   num_res_blocks=cfg.num_res_blocks, attention_resolutions=tuple(cfg.attention_resolutions),
                   dropout=cfg.dropout, num_heads=cfg.num_heads, cond_dim=cond_dim, image_size=latent_shape[-1])
    else:
        dim = int(torch.tensor(latent_shape).prod())
        if len(latent_shape) != 1:
            raise ValueError(f"denoiser.kind: mlp needs vector latents, these are {tuple(latent_shape)}")
        net = MLPDenoiser(dim, hidden=cfg.hidden, num_blocks=cfg.num_blocks, dropout=cfg.dropout,
                          cond_dim=cond_dim)
    return ConditionalDenoiser(net, num_values, cond_dim) if num_values else net


def build_ldm_from_checkpoint(state: dict, use_ema: bool = True, device="cpu"):
    """Rebuild ``LatentDiffusion`` from a stage-two checkpoint dict (see ``train_diffusion.py``)."""
    from latentdiff.data import AttributeSchema
    from latentdiff.latents import LatentNormaliser
    from latentdiff.pipeline import LatentDiffusion, check_autoencoder_identity

    task_state = state.get("task", {})
    if "latent_shape" not in task_state:
        raise CheckpointError("this is not a stage-two (diffusion) checkpoint; sample.py needs a "
                              "train_diffusion.py run")
    cfg = from_dict(LDMRunConfig, state["config"])
    latent_shape = tuple(task_state["latent_shape"])
    schema = AttributeSchema.from_dict(task_state["schema"]) if task_state.get("schema") else None
    num_values = task_state.get("num_values") if cfg.conditioning.enabled else None
    denoiser = build_denoiser(cfg.denoiser, latent_shape, num_values)
    load_weights(denoiser, state, use_ema, what="the denoiser checkpoint")
    autoencoder = None
    ae = task_state.get("ae")
    if ae:
        check_autoencoder_identity(ae["path"], ae["hash"])
        autoencoder = load_autoencoder(ae["path"], use_ema=ae.get("use_ema", True), device=device)
        if tuple(autoencoder.latent_shape) != latent_shape:
            raise CheckpointError(f"autoencoder {ae['path']} has latents {tuple(autoencoder.latent_shape)}, "
                                  f"the diffusion was trained on {latent_shape}")
    normaliser = LatentNormaliser.from_state(task_state["normaliser"])
    return LatentDiffusion(build_diffusion(cfg.diffusion), denoiser.to(device).eval(), autoencoder, normaliser,
                           latent_shape, schema=schema, config=state["config"])
