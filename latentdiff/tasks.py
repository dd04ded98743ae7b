"""What each stage trains, in the shape the shared loop expects (see ``latentdiff.training``).

``AutoencoderTask``: stage one, reconstruction (+ KL / RAE / LPIPS / GAN terms) of images.
``DiffusionTask``: stage two, the ε objective on (normalised) latent codes or directly on data.
``JointTask``: the third stage, encoder, decoder and latent denoiser fine-tuned together on the two-stage bound
(LSGM, Vahdat et al. 2021), from a trained stage two.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from latentdiff.conditioning import drop_attributes
from latentdiff.latents import LatentNormaliser, training_batch
from latentdiff.loading import write_autoencoder_copy
from latentdiff.metrics.image import mse, psnr, ssim
from latentdiff.metrics.likelihood import (
    autoencoder_decoder_variance,
    diffusion_latent_nll,
    gaussian_decoder_nll,
    gaussian_entropy,
    vae_bound,
)
from latentdiff.runtime import is_main_process
from latentdiff.viz import image_grid, scatter_image


class AutoencoderTask:
    """Stage one. Batches are ``(images, attrs)``; ``best.pt`` is the best test PSNR.

    Args:
        model: the autoencoder (VAE / RAE / AE).
        objective: ``autoencoders.AutoencoderObjective`` (its discriminator, if any, trains alongside).
        test_images: held-out images (N, C, H, W) scored at every evaluation.
        grid_images: a fixed validation batch shown as input | reconstruction grids.
    """

    best_metric = ("psnr", "max")

    def __init__(self, model: nn.Module, objective, test_images: torch.Tensor, grid_images: torch.Tensor,
                 eval_batch_size: int = 250):
        self.model, self.objective = model, objective
        disc = getattr(objective, "discriminator", None)
        self.extra_modules = {"discriminator": disc} if disc is not None else {}
        self.test_images, self.grid_images = test_images, grid_images
        self.eval_batch_size = eval_batch_size

    def losses(self, batch, step):
        x = batch[0]
        return self.objective.losses(x, step)

    @torch.no_grad()
    def reconstruct(self, model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic reconstructions (posterior mode) and the latents, batched."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        recons, latents = [], []
        for chunk in images.split(self.eval_batch_size):
            z = model.encode(chunk.to(device)).mode()
            recons.append(model.decode(z).clamp(-1, 1).cpu())
            latents.append(z.cpu())
        model.train(was_training)
        return torch.cat(recons), torch.cat(latents)

    @torch.no_grad()
    def evaluate(self, model, step) -> dict:
        recon, _ = self.reconstruct(model, self.test_images)
        x = self.test_images
        return {"mse": float(mse(recon, x)), "psnr": float(psnr(recon, x)), "ssim": float(ssim(recon, x))}

    @torch.no_grad()
    def log_images(self, writer, model, step) -> None:
        if writer is None:
            return
        recon, z = self.reconstruct(model, self.grid_images)
        pairs = torch.stack([self.grid_images, recon], dim=1).flatten(0, 1)  # input, output, input, ...
        writer.add_image("reconstructions/input_output", image_grid(pairs, nrow=8), step)
        channel_dims = [0] + list(range(2, z.dim()))
        for c, (m, s) in enumerate(zip(z.mean(channel_dims), z.std(channel_dims))):
            writer.add_scalar(f"latents/mean_{c}", float(m), step)
            writer.add_scalar(f"latents/std_{c}", float(s), step)
        writer.add_histogram("latents/values", z.flatten(), step)


class DiffusionTask:
    """Stage two. Batches are ``(mean, logvar, attrs)`` from a latent cache, or ``(x, attrs)`` data.

    A VAE's cached posterior gives a fresh z ~ q(z|x) at every visit; z is normalised, attributes are
    randomly dropped for classifier-free guidance, and the ε loss of a random timestep is taken.
    Logs the loss per quarter of the timestep range; evaluates a fixed held-out ε loss (for best.pt)
    and, every ``bound_every`` steps, the variational bound in bits/dim.

    Args:
        diffusion: ``GaussianDiffusion``.
        model: the denoiser (``ConditionalDenoiser`` when ``conditional``).
        normaliser: applied to every z before diffusion.
        heldout: normalised held-out latents (N, *latent_shape) for the validation loss and the bound.
        autoencoder: the frozen stage one (None on data directly), written into the run folder at the start.
        render: ``render(model, step) -> {tag: image (3, H, W)}`` pictures for TensorBoard.
    """

    best_metric = ("val_loss", "min")

    def __init__(self, diffusion, model: nn.Module, normaliser: LatentNormaliser, heldout: torch.Tensor,
                 from_cache: bool, conditional: bool = False, drop_attribute_prob: float = 0.1,
                 drop_all_prob: float = 0.1, render=None, bound_every: int = 2000, bound_timesteps: int = 100,
                 extra_state: dict | None = None, autoencoder: nn.Module | None = None):
        self.diffusion, self.model, self.normaliser = diffusion, model, normaliser
        self.extra_modules = {}
        self.heldout = heldout
        self.from_cache, self.conditional = from_cache, conditional
        self.p_attr, self.p_all = drop_attribute_prob, drop_all_prob
        self.render = render
        # Monte Carlo over t keeps the periodic bound cheap; with few timesteps it is the exact sum.
        self.bound_every = bound_every
        self.bound_timesteps = bound_timesteps if bound_timesteps < diffusion.num_timesteps - 1 else None
        self.extra_state = extra_state or {}
        self.autoencoder = autoencoder  # frozen stage one, copied into the run folder by write_run_files
        # Fixed timesteps and noise for the validation loss, so its changes are the model's alone.
        g = torch.Generator().manual_seed(1234)
        T = diffusion.num_timesteps
        self.val_t = torch.randint(0, T, (heldout.shape[0],), generator=g)
        self.val_noise = torch.randn(heldout.shape, generator=g)

    def state(self) -> dict:
        return {"normaliser": self.normaliser.state(), **self.extra_state}

    def write_run_files(self, run_dir) -> None:
        """Before the first step, once the run folder is checked: the copy of the frozen autoencoder that the
        checkpoints name (``extra_state["ae"]["copy"]``), so the run samples without its stage-one run."""
        if self.autoencoder is not None:
            write_autoencoder_copy(self.autoencoder, run_dir)

    def load_state(self, state: dict) -> None:
        saved_ae, current_ae = state.get("ae"), self.extra_state.get("ae")
        if saved_ae and current_ae and saved_ae["hash"] != current_ae["hash"]:
            from latentdiff.checkpoints import CheckpointError

            raise CheckpointError(f"this run was trained on autoencoder {saved_ae['path']} (hash "
                                  f"{saved_ae['hash'][:12]}), ae.run now points at another one "
                                  f"({current_ae['hash'][:12]}); use a new run name to train on it")
        if "normaliser" in state:
            self.normaliser = LatentNormaliser.from_state(state["normaliser"])

    def losses(self, batch, step):
        z, attrs = training_batch(batch, self.from_cache, self.normaliser)
        cond = drop_attributes(attrs, self.p_attr, self.p_all) if self.conditional else None
        T = self.diffusion.num_timesteps
        t = torch.randint(0, T, (z.shape[0],), device=z.device)
        per_example = self.diffusion.training_loss(self.model, z, cond=cond, t=t, reduce=False)
        loss = per_example.mean()
        logs = {"loss": loss.detach()}
        quarter = (t * 4) // T
        for q in range(4):
            mask = quarter == q
            if mask.any():
                logs[f"loss_by_t/q{q + 1}"] = per_example.detach()[mask].mean()
        return {"model": loss}, logs

    @torch.no_grad()
    def evaluate(self, model, step) -> dict:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        z, t, noise = self.heldout.to(device), self.val_t.to(device), self.val_noise.to(device)
        val = self.diffusion.training_loss(model, z, t=t, noise=noise, reduce=False).mean()
        metrics = {"val_loss": float(val)}
        if step % self.bound_every == 0 or step == 0:
            bound = self.diffusion.nll_bound(model, z, mc_timesteps=self.bound_timesteps)
            # The diffusion's bound on the *normalised latents*, in bits per latent dimension (evaluate.py's
            # latent_bpd): a continuous density, so it can be negative; not bits per image dimension, which
            # needs the autoencoder's terms too (evaluate.py's bpd).
            metrics["latent_bpd"] = float(torch.as_tensor(bound["bpd"]).mean())
        model.train(was_training)
        return metrics

    @torch.no_grad()
    def log_images(self, writer, model, step) -> None:
        if writer is None or self.render is None:
            return
        was_training = model.training
        model.eval()
        for tag, image in self.render(model, step).items():
            writer.add_image(tag, image, step)
        model.train(was_training)


class JointModel(nn.Module):
    """A VAE and the latent denoiser of its prior as one module, so the loop keeps one EMA and one checkpoint entry
    for both (keys ``autoencoder.*``, ``denoiser.*``), plus the decoder's log-variance log σ² of the Gaussian
    likelihood p(x|z) = N(D(z), σ² I), learned with them (its optimum is the mean squared error + Δ²/12)."""

    def __init__(self, autoencoder: nn.Module, denoiser: nn.Module, decoder_variance: float):
        super().__init__()
        self.autoencoder, self.denoiser = autoencoder, denoiser
        self.decoder_logvar = nn.Parameter(torch.tensor(math.log(decoder_variance)))


@contextmanager
def frozen(module: nn.Module):
    """Gradients pass through ``module`` to its inputs but not into its parameters (restored afterwards)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def joint_bound_terms(model: JointModel, diffusion, normaliser: LatentNormaliser, x: torch.Tensor, cond=None,
                      importance_sampling: bool = True, train_denoiser: bool = True) -> dict:
    """One-sample estimates of the two-stage bound's terms per image (B,) in nats (docs/math.md, "Joint training"):

        −ELBO(x) = E_q[−log p(x|z)] − H[q(z|x)] + CE(q(z|x) ‖ p_θ(z)),

    the reconstruction with z ~ q(z|x) by reparameterisation (Kingma & Welling 2014, Eq. 10) under the bound's
    Gaussian, dequantised decoder (``gaussian_decoder_nll``), the entropy in closed form (``gaussian_entropy``),
    and the cross-entropy as ``GaussianDiffusion.bound_estimate`` of z_n = normalise(z) minus log |det ∂z_n/∂z|.
    Gradients reach the encoder through z in every term. ``train_denoiser=False`` keeps them out of the denoiser's
    parameters (LSGM's split: it trains on its own objective instead). x: (B, C, H, W) images in [-1, 1].
    Returns reconstruction, neg_entropy, cross_entropy, total (B,) and z_n (B, *latent_shape).
    """
    posterior = model.autoencoder.encode(x)
    z = posterior.sample()
    reconstruction = gaussian_decoder_nll(x, model.autoencoder.decode(z), model.decoder_logvar.exp())
    neg_entropy = -gaussian_entropy(posterior.logvar)
    z_n = normaliser.normalise(z)
    log_det = normaliser.log_det_jacobian(tuple(z.shape[1:]))
    with frozen(model.denoiser) if not train_denoiser else nullcontext():
        cross_entropy = diffusion.bound_estimate(model.denoiser, z_n, cond, importance_sampling).double() - log_det
    return {"reconstruction": reconstruction, "neg_entropy": neg_entropy, "cross_entropy": cross_entropy,
            "total": reconstruction + neg_entropy + cross_entropy, "z_n": z_n}


class JointTask:
    """The third stage: a trained stage two fine-tuned end to end on the two-stage bound in bits/dim.

    Batches are ``(images, attrs)``. The loss is the bound's one-sample estimate (``joint_bound_terms``) per image
    dimension, in bits; with ``denoiser_objective="reweighted"`` the denoiser sees none of it and trains on its
    recipe's own loss (``diffusion.training_loss``: its weighting, uniform t) on the same z_n, detached (LSGM's
    split of the likelihood-weighted objective for q and the reweighted one for θ). From step ``autoencoder_steps``
    on the autoencoder and the decoder's variance are frozen (no gradient, so the optimiser skips them) and the
    denoiser trains on that same recipe loss over the frozen encoder's z ~ q(z|x): stage two on the new latents.
    ``best.pt`` is the lowest held-out bound.

    Args:
        model: ``JointModel`` (trainable; the EMA tracks all of it).
        diffusion, normaliser: the start run's (the normaliser stays fixed: part of the model from here on).
        heldout: held-out images (N, C, H, W) whose bound is evaluated; fit_images: other held-out images that fit
            the evaluation's decoder variance, as ``evaluate.py`` does.
        conditional, drop_attribute_prob, drop_all_prob: the start run's conditioning (the bound's cross-entropy
            uses the same dropped condition as the denoiser's loss).
        bound_timesteps: Monte Carlo timesteps per example in the evaluated bound (None: the exact sum).
        autoencoder_steps: steps that train the autoencoder (None: every step).
        render: ``image_render``'s ``render(denoiser, step, decoder=autoencoder)``.
    """

    best_metric = ("bpd", "min")

    def __init__(self, model: JointModel, diffusion, normaliser: LatentNormaliser, heldout: torch.Tensor,
                 fit_images: torch.Tensor, conditional: bool, drop_attribute_prob: float, drop_all_prob: float,
                 denoiser_objective: str = "likelihood", importance_sampling: bool = True,
                 bound_timesteps: int | None = 100, autoencoder_steps: int | None = None, render=None,
                 extra_state: dict | None = None):
        self.model, self.diffusion, self.normaliser = model.train(), diffusion, normaliser
        self.extra_modules = {}
        self.heldout, self.fit_images = heldout, fit_images
        self.conditional, self.p_attr, self.p_all = conditional, drop_attribute_prob, drop_all_prob
        self.reweighted, self.importance_sampling = denoiser_objective == "reweighted", importance_sampling
        self.bound_timesteps, self.autoencoder_steps, self.render = bound_timesteps, autoencoder_steps, render
        self.frozen_said = False
        self.extra_state = extra_state or {}
        self.dims = heldout[0].numel()

    def state(self) -> dict:
        return {"normaliser": self.normaliser.state(), **self.extra_state}

    def load_state(self, state: dict) -> None:
        if "normaliser" in state:
            self.normaliser = LatentNormaliser.from_state(state["normaliser"])

    def losses(self, batch, step):
        x, attrs = batch
        cond = drop_attributes(attrs, self.p_attr, self.p_all) if self.conditional else None
        if self.autoencoder_steps is not None and step >= self.autoencoder_steps:
            if not self.frozen_said and is_main_process():
                print(f"step {step}: the autoencoder is frozen from here on (joint.autoencoder_steps); the denoiser "
                      f"finishes on its stage-two loss", flush=True)
            self.frozen_said = True
            with torch.no_grad():
                z_n = self.normaliser.normalise(self.model.autoencoder.encode(x).sample())
            denoiser_loss = self.diffusion.training_loss(self.model.denoiser, z_n, cond=cond)
            return {"model": denoiser_loss}, {"loss": denoiser_loss.detach(), "denoiser_loss": denoiser_loss.detach()}
        terms = joint_bound_terms(self.model, self.diffusion, self.normaliser, x, cond, self.importance_sampling,
                                  train_denoiser=not self.reweighted)
        to_bits = 1 / (self.dims * math.log(2))
        bound = terms["total"].mean() * to_bits
        logs = {"loss": bound.detach(), "bpd": bound.detach(),
                **{f"bpd/{k}": terms[k].detach().mean() * to_bits
                   for k in ("reconstruction", "neg_entropy", "cross_entropy")},
                "decoder_variance": self.model.decoder_logvar.detach().exp()}
        loss = bound.float()
        if self.reweighted:
            denoiser_loss = self.diffusion.training_loss(self.model.denoiser, terms["z_n"].detach(), cond=cond)
            logs["denoiser_loss"] = denoiser_loss.detach()
            loss = loss + denoiser_loss
        return {"model": loss}, logs

    @torch.no_grad()
    def evaluate(self, model: JointModel, step) -> dict:
        """Reconstruction PSNR (posterior mode) and the two-stage bound in bits/dim on the held-out images, with
        the decoder variance fitted on other held-out images and fixed draws (``evaluate.py``'s bound)."""
        was_training = model.training
        model.eval()
        ae, device = model.autoencoder, next(model.parameters()).device
        x, x_fit = self.heldout.to(device), self.fit_images.to(device)
        recon = ae.decode(ae.encode(x).mode()).clamp(-1, 1)
        var = autoencoder_decoder_variance(ae, x_fit, torch.Generator(device=device).manual_seed(0))
        nll = diffusion_latent_nll(self.diffusion, model.denoiser, self.normaliser, mc_timesteps=self.bound_timesteps,
                                   generator=torch.Generator(device=device).manual_seed(1))
        bound = vae_bound(ae, x, nll, var, generator=torch.Generator(device=device).manual_seed(2))
        model.train(was_training)
        to_bits = 1 / (self.dims * math.log(2))
        return {"bpd": float(bound["bpd"].mean()), "psnr": float(psnr(recon.cpu(), self.heldout)),
                **{f"bpd_{k}": float(bound[k].mean()) * to_bits for k in ("reconstruction", "neg_entropy",
                                                                           "latent_prior")}}

    @torch.no_grad()
    def log_images(self, writer, model: JointModel, step) -> None:
        if writer is None:
            return
        was_training = model.training
        model.eval()
        ae, device = model.autoencoder, next(model.parameters()).device
        x = self.heldout[:32].to(device)
        recon = ae.decode(ae.encode(x).mode()).clamp(-1, 1)
        writer.add_image("reconstructions/input_output", image_grid(torch.stack([x, recon], 1).flatten(0, 1).cpu(),
                                                                    nrow=8), step)
        if self.render is not None:
            for tag, image in self.render(model.denoiser, step, decoder=ae).items():
                writer.add_image(tag, image, step)
        model.train(was_training)


def toy_render(diffusion, data_points: torch.Tensor, normaliser: LatentNormaliser, n: int = 2000,
               steps: int | None = None, sampler: str = "ddpm", seed: int = 0, out_png=None):
    """``render`` for 2-D toys: a scatter of samples (white) over the data (blue), also saved as PNG."""

    def render(model, step):
        g = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        noise = torch.randn(n, *data_points.shape[1:], generator=g).to(device)
        z = diffusion.sample(model, noise.shape, sampler=sampler, steps=steps, noise=noise)
        points = normaliser.denormalise(z).cpu()
        image = scatter_image(points, reference=data_points[:n])
        if out_png is not None:
            from latentdiff.viz import save_png

            save_png(image, out_png)
        return {"samples/scatter": image}

    return render
