"""The stage-one autoencoders: a KL-regularised VAE and a deterministic (regularised) autoencoder.

Both share one interface::

    posterior = model.encode(x)        # x: (B, C, S, S) images in [-1, 1]
    z = posterior.sample(generator)    # or posterior.mode(); (B, *model.latent_shape)
    x_hat = model.decode(z)            # (B, C, S, S), unbounded (no tanh); clamp for display
    x_hat, posterior = model(x, sample_posterior=True)
    posterior.kl()                     # (B,) KL(q(z|x) ‖ N(0, I)) in nats; zeros for the Dirac posterior

``model.config`` holds plain values, so ``build_autoencoder(**model.config)`` rebuilds the architecture;
``model.save_pretrained(dir)`` / ``Autoencoder.from_pretrained(dir)`` export and load it without pickle
(``latentdiff.bundle``: config.json + safetensors; that module knows nothing about diffusion).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoencoders.blocks import Decoder, Encoder
from latentdiff.bundle import bundle_files, load_module_weights, open_bundle, read_tensors, write_bundle
from latentdiff.checkpoints import CheckpointError

KINDS = ("vae", "rae", "ae")


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))), the VAE posterior (Kingma & Welling 2014).

    Args:
        mean, logvar: (B, *latent_shape). The log-variance is clamped to [-30, 20] (as in LDM) so that
            exp never overflows early in training.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std · ε, ε ~ N(0, I): the reparameterisation trick (Kingma & Welling 2014, Eq. 10)."""
        mean = self.mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), summed over latent dims (Kingma & Welling
        2014, App. B); (B,) nats."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)


class Dirac:
    """The deterministic encoder's "posterior": all mass on z = E(x). Sampling returns z; KL is zero
    (it is not defined for a point mass; the RAE's latent penalty lives in the loss instead)."""

    def __init__(self, z: torch.Tensor):
        self.mean = z

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        return self.mean.new_zeros(self.mean.shape[0])


class Autoencoder(nn.Module):
    """Shared architecture of both autoencoders (use ``VAE`` or ``DeterministicAE``).

    Args:
        in_channels: image channels (1 for MNIST-like, 3 for RGB).
        image_size: side S of the square images; must be divisible by f.
        base_channels: width of the full-resolution level (keep it small: it dominates CPU cost).
        channel_mults: width multiplier per level; ``len(channel_mults) - 1`` halvings give the downsampling
            factor f = 2^(len − 1) ∈ {1, 2, 4, 8}. The defaults (16, (1, 2, 4)): 16/32/64 channels at
            32²/16²/8², f = 4, 0.39 M parameters; on Fashion-MNIST they reached a higher PSNR in a fixed CPU
            time than wider full-resolution levels (32, (1, 2, 2)) or two blocks per level.
        num_res_blocks: residual blocks per level (encoder and decoder each).
        latent_channels: C of the spatial latents (C, S/f, S/f); unused with ``latent_dim``.
        attention: self-attention at the lowest resolution.
        dropout: dropout probability in the residual blocks.
        latent_dim: set → vector latents (latent_dim,) via a flattening linear head (for small images).
        spectral_norm: wrap every conv/linear of the decoder in spectral normalisation (Miyato et al. 2018),
            the RAE-SN decoder regulariser of Ghosh et al. 2020. It lives here, not in the loss, because it
            changes the parameters (and the checkpoint's keys).
    """

    kind = "ae"
    encoder_outputs_per_latent = 1  # values the encoder emits per latent dimension (2 for a VAE: μ, log σ²)

    def __init__(self, in_channels: int = 3, image_size: int = 32, base_channels: int = 16,
                 channel_mults: tuple = (1, 2, 4), num_res_blocks: int = 1, latent_channels: int = 4,
                 attention: bool = False, dropout: float = 0.0, latent_dim: int | None = None,
                 spectral_norm: bool = False):
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        check_architecture(in_channels, image_size, base_channels, channel_mults, num_res_blocks,
                           latent_channels, dropout, latent_dim)
        self._arch = dict(in_channels=int(in_channels), image_size=int(image_size),
                          base_channels=int(base_channels), channel_mults=list(channel_mults),
                          num_res_blocks=int(num_res_blocks), latent_channels=int(latent_channels),
                          attention=bool(attention), dropout=float(dropout),
                          latent_dim=None if latent_dim is None else int(latent_dim),
                          spectral_norm=bool(spectral_norm))
        self.factor = 2 ** (len(channel_mults) - 1)
        side = image_size // self.factor
        self.latent_shape = (latent_dim,) if latent_dim is not None else (latent_channels, side, side)
        k = self.encoder_outputs_per_latent
        common = dict(image_size=image_size, base_channels=base_channels, channel_mults=channel_mults,
                      num_res_blocks=num_res_blocks, attention=attention, dropout=dropout)
        self.encoder = Encoder(in_channels, out_channels=k * latent_channels,
                               vector_dim=None if latent_dim is None else k * latent_dim, **common)
        self.decoder = Decoder(in_channels, latent_channels=latent_channels, vector_dim=latent_dim, **common)
        if spectral_norm:
            for module in list(self.decoder.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(module)

    @property
    def config(self) -> dict:
        """Plain-typed constructor arguments: ``build_autoencoder(**model.config)`` rebuilds this model."""
        return {"kind": self.kind, **self._arch}

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, S, S): the images this model encodes and decodes."""
        return (self._arch["in_channels"], self._arch["image_size"], self._arch["image_size"])

    @property
    def is_deterministic(self) -> bool:
        return self.encoder_outputs_per_latent == 1

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output-conv weight, a leaf parameter (under spectral norm: the un-normalised
        original), for LDM's adaptive GAN weight."""
        conv = self.decoder.conv_out
        if nn.utils.parametrize.is_parametrized(conv, "weight"):
            return conv.parametrizations.weight.original
        return conv.weight

    def bundle_files(self) -> dict[str, bytes]:
        """This model as the files of a bundle: ``config.json`` (``self.config``), ``model.safetensors`` (the
        current weights) and ``manifest.json`` (their sha256), see ``latentdiff.bundle``."""
        return bundle_files("autoencoder", {"model": self.config}, {"model": self.state_dict()})

    def save_pretrained(self, folder: str | Path) -> None:
        """Export to ``folder`` without pickle (``bundle_files``), all at once: a failure leaves no folder.

        The weights are this module's current ones (load the EMA weights first to export those, as
        ``latentdiff.loading.load_autoencoder`` does).
        """
        write_bundle(folder, self.bundle_files())

    @classmethod
    def from_pretrained(cls, folder: str | Path, device="cpu", note_unsealed: bool = True) -> Autoencoder:
        """A frozen model (eval mode, no gradients) from a ``save_pretrained`` folder, its manifest checked;
        never unpickles. ``note_unsealed``: note a bundle from before the manifest (False where the caller
        vouches for it: a diffusion bundle that noted it already, a run that checks the weights' hash)."""
        folder = Path(folder)
        config, _ = open_bundle(folder, "autoencoder", note_unsealed)
        try:
            model = build_autoencoder(**config["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / 'config.json'}: its model section does not describe an "
                                  f"autoencoder ({e})") from None
        load_module_weights(model, read_tensors(folder / "model.safetensors"), folder / "model.safetensors")
        return model.to(device).eval().requires_grad_(False)

    def encode(self, x: torch.Tensor):
        raise NotImplementedError  # the subclasses choose the posterior

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, *latent_shape) → (B, C, S, S) images, unbounded (no tanh); clamp to [-1, 1] for display."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True):
        """(reconstruction (B, C, S, S), posterior); z ~ q(z|x), or its mode if ``sample_posterior=False``."""
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior


class VAE(Autoencoder):
    """KL-regularised autoencoder with a diagonal Gaussian posterior (Kingma & Welling 2014; the LDM
    "KL-f" first stage). Arguments as ``Autoencoder``."""

    kind = "vae"
    encoder_outputs_per_latent = 2

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)


class DeterministicAE(Autoencoder):
    """Deterministic autoencoder: the RAE of Ghosh et al. 2020 ("From Variational to Deterministic
    Autoencoders") when trained with its regularisers (``kind="rae"``), or a plain AE (``kind="ae"``).
    The regularisers live in ``AutoencoderLoss``; ``kind`` only tells the loss which ones apply.
    Other arguments as ``Autoencoder``."""

    def __init__(self, *args, kind: str = "rae", **kwargs):
        if kind not in ("rae", "ae"):
            raise ValueError(f"kind: DeterministicAE is 'rae' or 'ae', not {kind!r}; use VAE for 'vae'")
        super().__init__(*args, **kwargs)
        self.kind = kind

    def encode(self, x: torch.Tensor) -> Dirac:
        return Dirac(self.encoder(x))


def check_architecture(in_channels, image_size, base_channels, channel_mults, num_res_blocks, latent_channels,
                       dropout, latent_dim) -> None:
    """One-line ValueErrors for architecture values that cannot work."""
    if in_channels < 1 or base_channels < 1:
        raise ValueError(f"in_channels={in_channels}, base_channels={base_channels}: both must be >= 1")
    if not 1 <= len(channel_mults) <= 4 or min(channel_mults) < 1:
        raise ValueError(f"channel_mults={list(channel_mults)}: give 1 to 4 positive multipliers "
                         f"(the downsampling factor f = 2^(levels-1) must be 1, 2, 4 or 8)")
    factor = 2 ** (len(channel_mults) - 1)
    if image_size < 1 or image_size % factor:
        raise ValueError(f"image_size={image_size} is not divisible by the downsampling factor f={factor} "
                         f"of channel_mults={list(channel_mults)}; resize the images or use fewer levels")
    if num_res_blocks < 0:
        raise ValueError(f"num_res_blocks={num_res_blocks}: must be >= 0")
    if latent_channels < 1:
        raise ValueError(f"latent_channels={latent_channels}: must be >= 1")
    if latent_dim is not None and latent_dim < 1:
        raise ValueError(f"latent_dim={latent_dim}: must be >= 1, or None for spatial latents")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout}: must be in [0, 1)")


def build_autoencoder(kind: str = "vae", **arch) -> Autoencoder:
    """``VAE`` for kind "vae", ``DeterministicAE`` for "rae" (regularised) and "ae" (plain).

    ``arch``: the ``Autoencoder`` arguments; ``build_autoencoder(**model.config)`` rebuilds a model.
    """
    if kind == "vae":
        return VAE(**arch)
    if kind in ("rae", "ae"):
        return DeterministicAE(kind=kind, **arch)
    raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
