"""Explicit constructors from config sections to objects, shared by the commands and ``latentdiff.loading``."""

from __future__ import annotations

import torch

from autoencoders import build_autoencoder
from latentdiff.conditioning import ConditionalDenoiser
from latentdiff.config import AEModelConfig, DataConfig, DenoiserConfig, DiffusionConfig
from latentdiff.data import build_dataset
from latentdiff.diffusion import GaussianDiffusion
from latentdiff.nets import MLPDenoiser, UNet


def build_data(cfg: DataConfig, split: str):
    """The dataset of ``split`` ("train" or "test") described by the ``data`` section."""
    size = cfg.train_size if split == "train" else cfg.test_size
    return build_dataset(cfg.name, split, root=cfg.root, download=cfg.download, image_size=cfg.image_size,
                         size=size, seed=cfg.seed, **cfg.options)


def build_autoencoder_from_config(m: AEModelConfig, sample_shape: tuple):
    """The stage-one model of the ``model`` section for images of ``sample_shape`` (C, H, W)."""
    return build_autoencoder(m.kind, in_channels=sample_shape[0], image_size=sample_shape[-1],
                             base_channels=m.base_channels, channel_mults=tuple(m.channel_mults),
                             num_res_blocks=m.num_res_blocks, latent_channels=m.latent_channels,
                             latent_dim=m.latent_dim, attention=m.attention, dropout=m.dropout,
                             spectral_norm=m.spectral_norm)


def build_diffusion(cfg: DiffusionConfig):
    return GaussianDiffusion(num_timesteps=cfg.num_timesteps, beta_schedule=cfg.beta_schedule,
                             beta_start=cfg.beta_start, beta_end=cfg.beta_end, variance=cfg.variance,
                             prediction=cfg.prediction, loss_weighting=cfg.loss_weighting,
                             min_snr_gamma=cfg.min_snr_gamma)


def build_denoiser(cfg: DenoiserConfig, latent_shape: tuple, num_values: list[int] | None = None):
    """UNet for (C, H, W) latents, residual MLP for vectors; wrapped for attributes when ``num_values``."""
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
