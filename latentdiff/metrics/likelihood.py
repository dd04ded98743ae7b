"""Likelihood bounds in nats and bits/dim: a diffusion prior over latents, and the two-stage bound on images.

For a VAE (encoder q(z|x), decoder p(x|z)) with a prior p(z), the ELBO (Kingma & Welling 2014, Eq. 3) gives

    −log p(x) ≤ E_q[−log p(x|z)] − H[q(z|x)] + E_q[−log p(z)].

The prior is either the VAE's own N(0, I) or the latent diffusion. The diffusion was trained on normalised
latents z_n = (z − shift) · scale, so with its own bound L(z_n) ≥ −log p_n(z_n) (Ho et al. 2020, Eq. 5) the
change of variables p(z) = p_n(z_n) |det ∂z_n/∂z| gives

    −log p(z) ≤ L(z_n) − log |det ∂z_n/∂z|     (``LatentNormaliser.log_det_jacobian``).

Pixels are 8-bit: image values are k/127.5 − 1, k ∈ 0..255, spaced Δ = 2/255 apart. A density p over
x̃ = x + (u − ½)Δ, u ~ U(0, 1)^D ("uniform dequantisation", Theis et al. 2016, §3.1) bounds the discrete
probability of the bin around x: −log P(x) ≤ E_u[−log p(x̃)] − D log Δ. With a Gaussian decoder
p(x̃|z) = N(D(z), σ² I) the expectation over u is closed-form, E_u[(x̃ − μ)²] = (x − μ)² + Δ²/12, so no
noise is drawn for it. bits/dim = nats / (D ln 2) with D the number of pixel values (C·H·W).
"""

from __future__ import annotations

import math

import torch

PIXEL_BIN = 2.0 / 255.0  # spacing of 8-bit pixel values mapped to [-1, 1]


def gaussian_decoder_nll(x: torch.Tensor, mean: torch.Tensor, var: float,
                         bin_width: float | None = PIXEL_BIN) -> torch.Tensor:
    """Per example (B,) nats of the decoder term for 8-bit data under p(x̃|z) = N(mean, var · I):

        E_u[−log N(x̃; μ, σ²)] − D log Δ = Σ_d ½ [log 2πσ² + ((x − μ)² + Δ²/12) / σ²] − D log Δ,

    an upper bound on −log P(x | z) of the discrete pixels (see the module docstring). ``bin_width=None``
    treats x as continuous: −log N(x; μ, σ²), with neither the Δ²/12 nor the −D log Δ term.
    x, mean: (B, ...); var: σ², a positive float or a 0-d tensor (joint training learns it: gradients flow).
    """
    x, mean = x.double(), mean.double()
    var = torch.as_tensor(var, dtype=torch.float64, device=x.device)
    if float(var.detach()) <= 0:
        raise ValueError(f"the decoder variance must be positive, got {float(var.detach())}")
    sq = (x - mean).pow(2)
    if bin_width is not None:
        sq = sq + bin_width**2 / 12
    nll = 0.5 * (torch.log(2 * math.pi * var) + sq / var).flatten(1).sum(1)
    if bin_width is not None:
        nll = nll - x[0].numel() * math.log(bin_width)
    return nll


def fit_decoder_variance(x: torch.Tensor, mean: torch.Tensor, bin_width: float | None = PIXEL_BIN) -> float:
    """σ² maximising the expected dequantised Gaussian likelihood of x given decoder means: the mean over all
    values of (x − μ)² + Δ²/12 (the Δ²/12 drops with ``bin_width=None``). x, mean: (B, ...)."""
    sq = (x.double() - mean.double()).pow(2).mean()
    return float(sq + (bin_width**2 / 12 if bin_width is not None else 0.0))


@torch.no_grad()
def autoencoder_decoder_variance(autoencoder, images: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """``fit_decoder_variance`` of ``images`` (B, C, H, W) against their decodings at one draw z ~ q(z|x) each: the
    decoder variance of the two-stage bound, fitted on held-out images other than the bound's own."""
    return fit_decoder_variance(images, autoencoder.decode(autoencoder.encode(images).sample(generator=generator)))


def gaussian_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """H[N(μ, diag(e^logvar))] = Σ_d ½ (1 + log 2π + logvar_d), per example (B,) nats. logvar: (B, ...)."""
    return 0.5 * (1 + math.log(2 * math.pi) + logvar.double()).flatten(1).sum(1)


def standard_normal_nll(z: torch.Tensor) -> torch.Tensor:
    """−log N(z; 0, I) = Σ_d ½ (z_d² + log 2π), per example (B,) nats: the VAE's own prior."""
    return 0.5 * (z.double().pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)


def diffusion_latent_nll(diffusion, denoiser, normaliser, cond=None, mc_timesteps: int | None = None,
                         batch_t: int = 10, generator: torch.Generator | None = None):
    """The latent diffusion as a prior over raw latents: z (B, *latent_shape) → (B,) nats,

        −log p(z) ≤ L(z_n) − log |det ∂z_n/∂z|,  z_n = normaliser.normalise(z),

    L from ``GaussianDiffusion.nll_bound`` (the exact sum over t when ``mc_timesteps`` is None).
    ``cond``: the denoiser's condition (None: the unconditional model).
    """

    def nll(z: torch.Tensor) -> torch.Tensor:
        z_n = normaliser.normalise(z)
        bound = diffusion.nll_bound(denoiser, z_n, cond=cond, mc_timesteps=mc_timesteps, batch_t=batch_t,
                                    generator=generator)
        return bound["total"].cpu() - normaliser.log_det_jacobian(tuple(z.shape[1:]))

    return nll


@torch.no_grad()
def vae_bound(autoencoder, images: torch.Tensor, latent_nll, decoder_var: float, draws: int = 1,
              bin_width: float | None = PIXEL_BIN, generator: torch.Generator | None = None) -> dict:
    """The two-stage bound on −log P(x) per image (see the module docstring), in nats and bits/dim.

    Args:
        autoencoder: ``encode(x)`` → a diagonal Gaussian posterior (``.sample``, ``.logvar``); ``decode(z)``.
        images: (B, C, H, W) in [-1, 1] (8-bit values, unless ``bin_width=None``).
        latent_nll: z → (B,) nats, an upper bound on −log p(z): ``standard_normal_nll`` for the VAE's own
            prior, ``diffusion_latent_nll(...)`` for the latent diffusion.
        decoder_var: σ² of the Gaussian decoder (``fit_decoder_variance`` on other held-out images).
        draws: z ~ q(z|x) per image for the Monte Carlo expectations (the entropy is exact).
    Returns:
        dict of (B,) float64 tensors: reconstruction (E_q[−log p(x|z)] incl. −D log Δ), neg_entropy
        (E_q[log q(z|x)]), latent_prior (E_q[−log p(z)]), total, bpd.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    posterior = autoencoder.encode(images)
    if not hasattr(posterior, "logvar"):
        raise ValueError("the two-stage bound needs a VAE (a Gaussian posterior); a deterministic autoencoder "
                         "has no likelihood on images")
    reconstruction = latent_prior = 0.0
    for _ in range(draws):
        z = posterior.sample(generator=generator)
        reconstruction = reconstruction + gaussian_decoder_nll(images, autoencoder.decode(z), decoder_var,
                                                               bin_width).cpu()
        latent_prior = latent_prior + latent_nll(z).cpu()
    reconstruction, latent_prior = reconstruction / draws, latent_prior / draws
    neg_entropy = -gaussian_entropy(posterior.logvar).cpu()
    total = reconstruction + neg_entropy + latent_prior
    return {"reconstruction": reconstruction, "neg_entropy": neg_entropy, "latent_prior": latent_prior,
            "total": total, "bpd": total / (images[0].numel() * math.log(2))}
