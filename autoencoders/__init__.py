"""Stage one: autoencoders that map images to latent codes, and their training objectives.

Knows nothing about diffusion. See ``models`` (VAE, DeterministicAE), ``losses`` (AutoencoderLoss,
AutoencoderObjective), ``discriminator`` (PatchGAN) and ``perceptual`` (LPIPS loading).
"""

from autoencoders.discriminator import PatchDiscriminator
from autoencoders.losses import AutoencoderLoss, AutoencoderObjective, adaptive_gan_weight
from autoencoders.models import VAE, DeterministicAE, DiagonalGaussian, Dirac, build_autoencoder
from autoencoders.perceptual import LPIPSUnavailable, load_lpips

__all__ = ["VAE", "DeterministicAE", "DiagonalGaussian", "Dirac", "build_autoencoder", "AutoencoderLoss",
           "AutoencoderObjective", "adaptive_gan_weight", "PatchDiscriminator", "load_lpips",
           "LPIPSUnavailable"]
