"""Stage-one training objectives: reconstruction, KL (VAE), RAE regularisers, LPIPS and PatchGAN terms.

Scale convention: every per-example term is the LDM objective (Rombach et al. 2022, whose reconstruction
and KL are sums over pixels and latent dimensions) divided by the number D = C·H·W of pixel values. So the
reconstruction is a plain per-pixel mean, ``kl_weight`` means what LDM's ``kl_weight`` means (1e-6 there
is 1e-6 here), and the loss stays O(1), which keeps gradient clipping meaningful.

``AutoencoderObjective`` is the one call per batch the training loop makes::

    objective = AutoencoderObjective(model, **loss_config)
    losses, logs = objective.losses(x, step)   # {"model": scalar, "disc": scalar or None}, {name: value}
    (losses["model"] + (losses["disc"] or 0)).backward()

Backward of that sum gives the autoencoder only the autoencoder loss's gradient and the discriminator only
the discriminator loss's gradient, so one optimizer with two parameter groups trains both.
"""

from __future__ import annotations

import torch
from torch import nn

from autoencoders.discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from autoencoders.perceptual import load_lpips

REGULARISERS = ("none", "grad_penalty", "weight_decay", "spectral_norm")


def jacobian_frobenius_sq(decode, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example unbiased estimate of ‖∂D(z)/∂z‖²_F: ‖Jᵀv‖² with v ~ N(0, I), since E[vvᵀ] = I gives
    E‖Jᵀv‖² = tr(J Jᵀ) (Hutchinson 1990). The RAE gradient penalty (Ghosh et al. 2020, Eq. 11) with one
    vector–Jacobian product instead of the full Jacobian.

    Args:
        decode: z (B, *latent_shape) → x (B, ...), per-example independent.
        z: latent codes; treated as constants (the penalty smooths the decoder, it does not move z).
        generator: for v.
    Returns: (B,) estimates, differentiable w.r.t. the decoder's parameters.
    """
    z = z.detach().requires_grad_(True)
    x = decode(z)
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    (jt_v,) = torch.autograd.grad((x * v).sum(), z, create_graph=True)
    return jt_v.pow(2).flatten(1).sum(1)


def adaptive_gan_weight(nll: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        eps: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """λ = ‖∇_L nll‖ / (‖∇_L gan_loss‖ + eps), clamped to [0, max_weight], detached (Esser et al. 2021,
    VQGAN Eq. 7; LDM's ``calculate_adaptive_weight``): balances the GAN gradient against the reconstruction's
    at the decoder's last layer L. Uses ``torch.autograd.grad``, so nothing is accumulated into ``.grad``."""
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    return (g_nll.norm() / (g_gan.norm() + eps)).clamp(0.0, max_weight).detach()


class AutoencoderLoss(nn.Module):
    """Reconstruction (+ LPIPS) and the regulariser of the chosen autoencoder kind; no GAN term.

    Args:
        kind: "vae" (KL term), "rae" (latent L2 + decoder regulariser) or "ae" (neither). The weights of the
            terms a kind does not use are ignored.
        reconstruction: "l1" or "l2" per-pixel distance; ``reconstruction_weight`` scales it.
        kl_weight: β on KL(q(z|x) ‖ N(0, I)) / D (Higgins et al. 2017); ``kl_warmup_steps`` ramps it
            linearly from 0 to β (Bowman et al. 2016), 0 = no ramp.
        latent_l2_weight: RAE's ½‖z‖² / D penalty weight (Ghosh et al. 2020, Eq. 10, L_z^RAE).
        decoder_regulariser: RAE decoder regulariser (Ghosh et al. 2020, Sec. 4):
            "grad_penalty": ``decoder_reg_weight`` · ‖∂D/∂z‖²_F / D (one extra decoder pass);
            "weight_decay": ``decoder_reg_weight`` · Σ‖W‖² over the decoder's weight matrices and kernels;
            "spectral_norm": no loss term: spectral normalisation is built into the decoder by the model's
            ``spectral_norm=True`` (it changes the parameters, so it belongs to the architecture);
            "none".
        perceptual_weight: weight of the LPIPS distance (per image, as in LDM); 0 skips loading it.
        perceptual_net: LPIPS backbone, "alex" | "vgg" | "squeeze".
        perceptual_pretrained: False uses a random backbone (tests only; nothing to download).
    """

    def __init__(self, kind: str = "vae", reconstruction: str = "l2", reconstruction_weight: float = 1.0,
                 kl_weight: float = 1e-6, kl_warmup_steps: int = 0, latent_l2_weight: float = 1e-4,
                 decoder_regulariser: str = "none", decoder_reg_weight: float = 1e-6,
                 perceptual_weight: float = 0.0, perceptual_net: str = "vgg",
                 perceptual_pretrained: bool = True):
        super().__init__()
        if kind not in ("vae", "rae", "ae"):
            raise ValueError(f"kind={kind!r}: choose vae, rae or ae")
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"loss.reconstruction={reconstruction!r}: choose l1 or l2")
        if decoder_regulariser not in REGULARISERS:
            raise ValueError(f"loss.decoder_regulariser={decoder_regulariser!r}: choose one of "
                             f"{', '.join(REGULARISERS)}")
        if decoder_regulariser != "none" and kind != "rae":
            raise ValueError(f"loss.decoder_regulariser={decoder_regulariser!r} is an RAE regulariser but "
                             f"the model kind is {kind!r}; use kind rae or decoder_regulariser none")
        weights = dict(reconstruction_weight=reconstruction_weight, kl_weight=kl_weight,
                       latent_l2_weight=latent_l2_weight, decoder_reg_weight=decoder_reg_weight,
                       perceptual_weight=perceptual_weight, kl_warmup_steps=kl_warmup_steps)
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"loss.{name}={value}: must be >= 0")
        self.kind, self.reconstruction, self.rec_weight = kind, reconstruction, reconstruction_weight
        self.kl_weight, self.kl_warmup_steps = kl_weight, kl_warmup_steps
        self.latent_l2_weight = latent_l2_weight
        self.decoder_regulariser, self.decoder_reg_weight = decoder_regulariser, decoder_reg_weight
        self.perceptual_weight = perceptual_weight
        self.perceptual = load_lpips(perceptual_net, perceptual_pretrained) if perceptual_weight > 0 else None

    def kl_weight_at(self, step: int) -> float:
        """β · min(1, step / kl_warmup_steps): linear warm-up from 0 (β itself without warm-up)."""
        if self.kl_warmup_steps == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, step / self.kl_warmup_steps)

    def forward(self, model: nn.Module, x: torch.Tensor, recon: torch.Tensor, posterior, step: int):
        """Loss terms for images ``x`` (B, C, H, W), their reconstructions and posterior.

        Returns ``(nll, regularisation, logs)``: nll = weighted reconstruction + perceptual distance (the
        part the adaptive GAN weight balances against), regularisation = the kind's latent/decoder terms;
        both scalars. ``logs`` maps each term's name to a detached 0-d tensor.
        """
        D = x[0].numel()
        diff = recon - x
        rec = diff.abs().mean() if self.reconstruction == "l1" else diff.pow(2).mean()
        nll = self.rec_weight * rec
        logs = {"rec": rec.detach()}
        if self.perceptual is not None:
            p = self.perceptual(recon, x).mean()
            nll = nll + self.perceptual_weight * p
            logs["perceptual"] = p.detach()
        reg = torch.zeros((), device=x.device)
        if self.kind == "vae":
            kl = posterior.kl().mean()
            beta = self.kl_weight_at(step)
            reg = reg + beta * kl / D
            logs.update(kl=kl.detach(), kl_weight=torch.tensor(beta))
        elif self.kind == "rae":
            z = posterior.mode()
            latent_l2 = 0.5 * z.pow(2).flatten(1).sum(1).mean()
            reg = reg + self.latent_l2_weight * latent_l2 / D
            logs["latent_l2"] = latent_l2.detach()
            if self.decoder_regulariser == "grad_penalty":
                gp = jacobian_frobenius_sq(model.decode, z).mean() / D
                reg = reg + self.decoder_reg_weight * gp
                logs["grad_penalty"] = gp.detach()
            elif self.decoder_regulariser == "weight_decay":
                wd = sum(p.pow(2).sum() for p in model.decoder.parameters() if p.dim() > 1)
                reg = reg + self.decoder_reg_weight * wd
                logs["weight_decay"] = wd.detach()
        return nll, reg, logs


class AutoencoderObjective(nn.Module):
    """The whole stage-one objective for one batch: ``AutoencoderLoss`` plus, optionally, a PatchGAN.

    Args:
        model: the autoencoder being trained. Held by reference, not as a submodule: the training loop owns,
            moves and saves it; this module's own submodules are the LPIPS network and the discriminator.
        reconstruction … perceptual_pretrained: as ``AutoencoderLoss`` (the kind comes from the model).
        disc_weight: weight of the hinge GAN term, multiplied by the adaptive weight λ; 0 = no discriminator.
        disc_start: first step with the GAN term and discriminator training (LDM starts it late, once
            reconstructions are decent); before it ``losses["disc"]`` is None.
        disc_layers, disc_channels: ``PatchDiscriminator`` depth and first-layer width.
        sample_posterior: train the VAE decoder on z ~ q(z|x) (True, the ELBO) or on the mean.
    """

    def __init__(self, model: nn.Module, reconstruction: str = "l2", reconstruction_weight: float = 1.0,
                 kl_weight: float = 1e-6, kl_warmup_steps: int = 0, latent_l2_weight: float = 1e-4,
                 decoder_regulariser: str = "none", decoder_reg_weight: float = 1e-6,
                 perceptual_weight: float = 0.0, perceptual_net: str = "vgg",
                 perceptual_pretrained: bool = True, disc_weight: float = 0.0, disc_start: int = 0,
                 disc_layers: int = 3, disc_channels: int = 64, sample_posterior: bool = True):
        super().__init__()
        config = model.config
        if decoder_regulariser == "spectral_norm" and not config["spectral_norm"]:
            raise ValueError("loss.decoder_regulariser=spectral_norm needs the decoder built with it: set "
                             "model.spectral_norm: true")
        if disc_weight < 0 or disc_start < 0:
            raise ValueError(f"loss.disc_weight={disc_weight}, loss.disc_start={disc_start}: "
                             f"both must be >= 0")
        self.__dict__["model"] = model  # a plain attribute, so it is not among this module's parameters
        self.loss = AutoencoderLoss(config["kind"], reconstruction, reconstruction_weight, kl_weight,
                                    kl_warmup_steps, latent_l2_weight, decoder_regulariser,
                                    decoder_reg_weight, perceptual_weight, perceptual_net,
                                    perceptual_pretrained)
        self.disc_weight, self.disc_start = disc_weight, disc_start
        self.discriminator = (PatchDiscriminator(config["in_channels"], disc_channels, disc_layers)
                              if disc_weight > 0 else None)
        self.sample_posterior = sample_posterior

    def losses(self, x: torch.Tensor, step: int):
        """``({"model": scalar, "disc": scalar or None}, logs)`` for images ``x`` (B, C, H, W) at ``step``."""
        recon, posterior = self.model(x, sample_posterior=self.sample_posterior)
        nll, reg, logs = self.loss(self.model, x, recon, posterior, step)
        total, disc_loss = nll + reg, None
        if self.discriminator is not None and step >= self.disc_start:
            # Generator term: the discriminator is a fixed function here, so it gets no gradient from it.
            self.discriminator.requires_grad_(False)
            try:
                gan = hinge_generator_loss(self.discriminator(recon))
            finally:
                self.discriminator.requires_grad_(True)
            if torch.is_grad_enabled() and nll.requires_grad:
                weight = self.disc_weight * adaptive_gan_weight(nll, gan, self.model.last_layer)
            else:  # no graph (evaluation): the adaptive ratio is undefined, use the plain weight
                weight = torch.tensor(self.disc_weight, device=x.device)
            total = total + weight * gan
            # Discriminator term on detached reconstructions, so the autoencoder gets no gradient from it.
            logits_real, logits_fake = self.discriminator(x.detach()), self.discriminator(recon.detach())
            disc_loss = hinge_discriminator_loss(logits_real, logits_fake)
            logs.update(gan=gan.detach(), gan_weight=weight.detach(), disc=disc_loss.detach(),
                        logits_real=logits_real.detach().mean(), logits_fake=logits_fake.detach().mean())
        logs["total"] = total.detach()
        return {"model": total, "disc": disc_loss}, logs
