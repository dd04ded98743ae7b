"""LatentDiffusion: frozen autoencoder + latent normaliser + diffusion + denoiser, as one object.

    ldm = LatentDiffusion.from_run("runs/shapes_ldm_kl")     # or .from_pretrained("exported/shapes")
    images = ldm.sample(16, attrs={"color": "red", "shape": "triangle"})   # the run's sampler and guidance
    ldm.save_pretrained("exported/shapes")                      # config.json + safetensors, no pickle
    z = ldm.encode(images)            # normalised latents, the space the diffusion lives in
    images = ldm.decode(z)
    strip = ldm.interpolate(images[0], images[1], 8)

Images are float tensors in [-1, 1], NCHW. Without an autoencoder (the 2-D toys) the "latents"
are the data themselves and encode/decode only normalise.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from latentdiff.bundle import is_bundle
from latentdiff.conditioning import UNSPECIFIED, AttributePrior, ConditionalDenoiser
from latentdiff.config import SampleConfig, from_dict
from latentdiff.data.common import load_image, to_unit_range
from latentdiff.guidance import classifier_grad_log_prob
from latentdiff.latent_classifier import load_classifier
from latentdiff.latents import LatentNormaliser
from latentdiff.loading import autoencoder_copy_hash, ldm_parts_from_bundle, ldm_parts_from_run, save_ldm_bundle

DEFAULT_BATCH_SIZE = 256  # latents per reverse-process batch; the same in sample.py, so results match
UNCONDITIONAL = "this run is unconditional (trained without attributes)"  # why attribute settings are refused


class LatentDiffusion(nn.Module):
    """Sampling, encoding and decoding through a trained two-stage model.

    Args:
        diffusion: a ``GaussianDiffusion``.
        denoiser: ε-network ``(z_t, t, cond) -> ε``; a ``ConditionalDenoiser`` for attribute runs.
        autoencoder: the frozen stage-one model, or None to diffuse directly over data.
        normaliser: maps autoencoder latents to the unit-scale space the diffusion was trained in.
        latent_shape: shape of one latent (e.g. (4, 8, 8) or (2,)).
        schema: the dataset's ``AttributeSchema`` (for ``attrs={"color": "red"}``), or None.
        config: the run's config dict (its ``sample:`` section gives the sampling defaults).
        attribute_prior: the training data's attribute combinations (``AttributePrior``), for ``unasked="data"``.
        guide: the autoguidance guide (Karras et al. 2024), a weaker denoiser with ``denoiser``'s signature: the
            run's EMA at ``train.guide_at``, or another run's model (:meth:`use_guide`); None: no autoguidance.
    """

    def __init__(self, diffusion, denoiser: nn.Module, autoencoder: nn.Module | None,
                 normaliser: LatentNormaliser, latent_shape: tuple, schema=None, config: dict | None = None,
                 attribute_prior: AttributePrior | None = None, guide: nn.Module | None = None):
        super().__init__()
        self.diffusion = diffusion
        self.denoiser = denoiser
        self.autoencoder = autoencoder
        self.normaliser = normaliser
        self.latent_shape = tuple(latent_shape)
        self.schema = schema
        self.config = config or {}
        self.attribute_prior = attribute_prior
        self.guide = guide

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def conditional(self) -> bool:
        return isinstance(self.denoiser, ConditionalDenoiser)

    @property
    def num_values(self) -> list[int] | None:
        """Values per attribute the denoiser is conditioned on (None for an unconditional run)."""
        return list(self.denoiser.embed.num_values) if self.conditional else None

    # -- latent space ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] → normalised latents (B, *latent_shape).

        ``sample=False`` takes the posterior mode (the mean of a VAE), ``True`` draws z ~ q(z|x).
        """
        x = images.to(self.device)
        if self.autoencoder is None:
            return self.normaliser.normalise(x)
        posterior = self.autoencoder.encode(x)
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return self.normaliser.normalise(z)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → images in [-1, 1] (clamped; the decoder itself is unbounded)."""
        z = self.normaliser.denormalise(latents.to(self.device))
        if self.autoencoder is None:
            return z
        return self.autoencoder.decode(z).clamp(-1, 1)

    # -- conditions ------------------------------------------------------------------------------
    def make_condition(self, n: int, attrs=None) -> torch.Tensor | None:
        """``attrs``: None, a dict {name: value}, or a (n, A) LongTensor → (n, A) indices or None."""
        if attrs is None:
            return None
        self.check_conditional()
        return self.attribute_rows(n, attrs)

    def check_conditional(self) -> None:
        """Attributes asked of an unconditional run (without a classifier to guide towards them) are refused."""
        if not self.conditional:
            raise ValueError(f"attrs (--attr, --grid-by): {UNCONDITIONAL}, so it cannot be asked for attributes; "
                             f"guide it with a latent classifier (classifier=, --classifier), or train with "
                             f"conditioning.enabled=true")

    def attribute_rows(self, n: int, attrs) -> torch.Tensor:
        """``attrs`` (a dict {name: value}, an (A,) or (n, A) LongTensor) → (n, A) value indices, −1 = free."""
        if isinstance(attrs, dict):
            if self.schema is None:
                raise ValueError("this run has no attribute schema")
            row = self.schema.parse(attrs)
            return row.view(1, -1).expand(n, -1).to(self.device)
        attrs = torch.as_tensor(attrs, dtype=torch.long, device=self.device)
        return attrs.view(1, -1).expand(n, -1) if attrs.dim() == 1 else attrs

    # -- sampling --------------------------------------------------------------------------------
    def sampling_settings(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                          guidance_scale: float | None = None, guidance_interval=None,
                          unasked: str | None = None, autoguidance_scale: float | None = None) -> dict:
        """The sampler settings to use: each argument given, else the run's ``sample:`` section.

        The one place defaults are resolved, for the Python API and every command (sample.py, evaluate.py,
        visualize.py, bench/, the gallery), so the same call gives the same images everywhere:
            sampler: the run's ``sample.sampler``;
            steps: the run's ``sample.steps`` when the sampler is the run's, else 50 for DDIM and DPM-Solver++,
                all T for DDPM, each at most T (pass ``steps=num_timesteps`` to ask for the full chain explicitly);
            eta: the run's ``sample.eta`` for DDIM (0 for other samplers, which have no η);
            guidance_scale: the run's ``sample.guidance_scale`` (classifier-free w; unused without attributes);
            guidance_interval: the run's ``sample.guidance_interval`` ((lo, hi) fractions of T where guidance
                acts, None: everywhere; pass ``(0, 1)`` to guide everywhere on a run that limits it);
            unasked: the run's ``sample.unasked``: "data" draws attributes not asked for from the training data
                (``complete_attributes``), "model" leaves them to the network. Used by ``sample`` only.
            autoguidance_scale: the run's ``sample.autoguidance_scale`` (w_a; 1: off): extrapolate away from the
                guide, D + (w_a − 1)(D − G) (``guidance.guided_output``), on conditional and unconditional runs
                alike, inside the guidance interval; refused (not ignored) when there is no guide.
        A value given that this run cannot honour is refused with a one-line ValueError naming the argument and
        its command-line flag, never clipped or ignored: ``steps`` outside 1..T, and on an unconditional run a
        ``guidance_scale`` other than 1, ``unasked="data"`` and, without autoguidance, any ``guidance_interval``
        (there is no condition to guide or to complete, no guidance to limit). An unconditional run resolves to
        guidance_scale 1 and unasked "model" whatever its ``sample:`` section says, and to no interval unless one is
        given here with autoguidance on: the section's interval is the classifier-free guidance's of the recipe it
        shares with the conditional model (Fashion-MNIST), and is not applied to an unconditional run's autoguidance
        unasked.
        Returns {"sampler", "steps", "eta", "guidance_scale", "guidance_interval", "unasked", "autoguidance_scale"}.
        """
        if unasked not in (None, "model", "data"):
            raise ValueError(f"unasked={unasked!r}: give 'model' (the network chooses) or 'data' (drawn from the "
                             f"training data's attribute combinations)")
        if not self.conditional:  # each of these would otherwise be silently ignored
            if guidance_scale is not None and guidance_scale != 1:
                raise ValueError(f"guidance_scale={guidance_scale:g} (--guidance): {UNCONDITIONAL}, so there is no "
                                 f"condition to guide towards; leave it unset, or guide with a latent classifier "
                                 f"(classifier=, --classifier)")
            if unasked == "data":
                raise ValueError(f"unasked='data' (--unasked data): {UNCONDITIONAL}, so there are no attributes to "
                                 f"draw; leave it unset")
        run = from_dict(SampleConfig, self.config.get("sample"), prefix="sample.")
        autoguidance_scale = run.autoguidance_scale if autoguidance_scale is None else float(autoguidance_scale)
        if autoguidance_scale < 0:
            raise ValueError(f"autoguidance_scale={autoguidance_scale:g} (--autoguidance): give w_a ≥ 0 (1: off)")
        if not self.conditional and guidance_interval is not None and autoguidance_scale == 1:
            raise ValueError(f"guidance_interval={tuple(guidance_interval)} (--guidance-interval): {UNCONDITIONAL}, "
                             f"so there is no classifier-free guidance to limit, and autoguidance is off (w_a = 1); "
                             f"leave it unset, or autoguide (--autoguidance W_A) inside it")
        if autoguidance_scale != 1 and self.guide is None:
            raise ValueError(f"autoguidance_scale={autoguidance_scale:g} (--autoguidance): this model has no guide "
                             f"(trained without train.guide_at); give one with use_guide(RUN) (--guide RUN), or "
                             f"leave it at 1")
        T = self.diffusion.num_timesteps
        sampler = sampler or run.sampler
        if steps is None:  # not asked for: the run's own or the sampler's default, fitted to the chain
            steps = run.steps if sampler == run.sampler else (None if sampler == "ddpm" else 50)
            steps = None if steps is None else min(steps, T)
        elif not 1 <= steps <= T:  # asked for: refused, never clipped
            raise ValueError(f"steps={steps} (--steps): this run has T = {T} diffusion timesteps; give 1 to {T}")
        if eta is None:
            eta = run.eta if sampler == "ddim" else 0.0
        if self.conditional:
            guidance_scale = run.guidance_scale if guidance_scale is None else guidance_scale
            interval = run.guidance_interval if guidance_interval is None else guidance_interval
            unasked = unasked or run.unasked
        else:  # the plain model: the sample: section's guidance has nothing to act on; an interval given limits
            guidance_scale, interval, unasked = 1.0, guidance_interval, "model"  # its autoguidance
        return {"sampler": sampler, "steps": None if steps is None else int(steps), "eta": float(eta),
                "guidance_scale": float(guidance_scale),
                "guidance_interval": None if interval is None else tuple(float(v) for v in interval),
                "unasked": unasked, "autoguidance_scale": autoguidance_scale}

    @torch.no_grad()
    def sample_latents(self, n: int, attrs=None, guidance_scale: float | None = None, sampler: str | None = None,
                       steps: int | None = None, eta: float | None = None, generator=None, noise=None,
                       progress: bool = False, classifier_guidance=None, classifier=None,
                       classifier_scale: float = 1.0, guidance_interval=None, autoguidance_scale=None,
                       **kw) -> torch.Tensor:
        """n normalised latents from the reverse process (see ``GaussianDiffusion.sample``).

        Settings left None are the run's (``sampling_settings``). ``classifier`` (a ``NoisyAttributeClassifier``
        or the folder ``train_classifier.py`` wrote) guides towards ``attrs`` with strength ``classifier_scale``
        (Dhariwal & Nichol 2021, Algorithm 2), for conditional and unconditional runs alike; attributes not
        given are not guided. Conditional runs also get ``attrs`` as their condition (classifier-free guidance
        with ``guidance_scale``).
        """
        s = self.sampling_settings(sampler, steps, eta, guidance_scale, guidance_interval,
                                   autoguidance_scale=autoguidance_scale)
        if classifier is not None:
            if attrs is None:
                raise ValueError("classifier guidance needs attributes to guide towards (attrs / --attr NAME=VALUE)")
            if isinstance(classifier, str | Path):
                classifier = self.load_classifier(classifier)
            rows = self.attribute_rows(n, attrs)
            classifier_guidance = (classifier_grad_log_prob(classifier, rows), classifier_scale)
            if not self.conditional:
                attrs = None  # the classifier alone carries them
        cond = self.make_condition(n, attrs)
        guidance_scale = s["guidance_scale"] if cond is not None else 1.0  # no condition: the unconditional model
        uncond = torch.full_like(cond, UNSPECIFIED) if cond is not None and guidance_scale != 1.0 else None
        return self.diffusion.sample(self.denoiser, (n, *self.latent_shape), sampler=s["sampler"], steps=s["steps"],
                                     eta=s["eta"], cond=cond, guidance_scale=guidance_scale, uncond=uncond,
                                     generator=generator, noise=noise, progress=progress,
                                     classifier_guidance=classifier_guidance,
                                     guidance_interval=s["guidance_interval"],
                                     autoguidance=self.autoguidance(s["autoguidance_scale"]), **kw)

    def autoguidance(self, scale: float):
        """``(guide, w_a)`` for ``GaussianDiffusion.sample``, or None when w_a = 1 (the guide is never called)."""
        return None if scale == 1 else (self.guide, scale)

    def use_guide(self, guide) -> LatentDiffusion:
        """Guide with another model (a run folder, a bundle, or a ``LatentDiffusion``): e.g. a smaller or
        shorter-trained run of the same stage two. Returns self.

        Refused in one line unless it diffuses the same latents: the same latent shape, attributes, prediction,
        noise schedule and normaliser, and the same autoencoder weights (their sha256)."""
        other = guide if isinstance(guide, LatentDiffusion) else LatentDiffusion.from_run(guide, device=self.device)
        what = f"guide {guide if not isinstance(guide, LatentDiffusion) else 'model'}"

        def identity(ldm: LatentDiffusion) -> dict:
            """What the guide and the model must share, as comparable values."""
            return {"latent shape": ldm.latent_shape, "attributes": ldm.num_values,
                    "prediction": ldm.diffusion.prediction, "noise schedule": ldm.diffusion.alphas_cumprod.tolist(),
                    "normaliser": [t.tolist() for t in ldm.normaliser.state().values()],
                    "autoencoder": autoencoder_hash(ldm.autoencoder)}

        mine, theirs = identity(self), identity(other)
        for name in mine:
            a, b = mine[name], theirs[name]
            if a != b:
                raise ValueError(f"{what}: {name} {str(b)[:40]} != this model's {str(a)[:40]}; a guide must be a "
                                 f"stage two trained on the same autoencoder's latents")
        self.guide = other.denoiser.to(self.device).eval()
        return self

    def complete_attributes(self, n: int, attrs=None, generator=None) -> torch.Tensor:
        """(n, A) conditions: ``attrs`` (None, a dict or indices, −1 = not asked) with every attribute not asked
        for drawn from the training data's p(a_unasked | a_asked) (``AttributePrior.complete``).

        The draws come from ``generator`` (a CUDA generator seeds a CPU one), after the x_T in :meth:`sample`.
        """
        if self.attribute_prior is None:
            raise ValueError("this run stores no attribute prior (trained before sample.unasked existed); sample "
                             "with unasked='model' (--unasked model), or retrain it")
        rows = self.attribute_rows(n, attrs) if attrs is not None else torch.full(
            (n, self.attribute_prior.rows.shape[1]), UNSPECIFIED, dtype=torch.long, device=self.device)
        if generator is not None and generator.device.type != "cpu":
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            generator = torch.Generator().manual_seed(seed)
        return self.attribute_prior.complete(rows, generator)

    def initial_noise(self, n: int, generator=None) -> torch.Tensor:
        """x_T ~ N(0, I) for n latents, drawn in one call from ``generator`` (on its device) before any step."""
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(n, *self.latent_shape, generator=generator, device=gen_device).to(self.device)

    @torch.no_grad()
    def sample(self, n: int, attrs=None, guidance_scale: float | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, generator=None, noise=None,
               progress: bool = False, return_latents: bool = False, batch_size: int | None = None,
               guidance_interval=None, unasked: str | None = None, return_conditions: bool = False,
               autoguidance_scale: float | None = None, **kw):
        """n images in [-1, 1]: sample latents, then decode. With ``return_latents`` also the latents, with
        ``return_conditions`` also the (n, A) attribute conditions used (None without attributes); both: a tuple
        (images, latents, conditions).

        Settings left None are the run's own (``sampling_settings``), exactly as ``sample.py`` uses them: with
        the same ``generator`` seed, attributes and n, this returns ``sample.py --seed K``'s images. The x_T of
        all n samples are drawn first (``initial_noise``), then the chain runs in batches of ``batch_size``
        (default 256), so n and the seed alone decide the result. ``unasked="data"`` (or the run's
        ``sample.unasked``) then draws the attributes not asked for from the training data
        (:meth:`complete_attributes`), nothing asked included, and conditions on all of them.
        """
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        if isinstance(kw.get("classifier"), str | Path):  # loaded once, not per batch
            kw["classifier"] = self.load_classifier(kw["classifier"])
        settings = self.sampling_settings(sampler, steps, eta, guidance_scale, guidance_interval, unasked,
                                          autoguidance_scale)
        noise = self.initial_noise(n, generator) if noise is None else noise
        if settings.pop("unasked") == "data" and self.conditional:
            attrs = self.complete_attributes(n, attrs, generator)
        images, latents = [], []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            part_attrs = attrs[start : start + b] if isinstance(attrs, torch.Tensor) and attrs.dim() == 2 else attrs
            z = self.sample_latents(b, part_attrs, generator=generator, noise=noise[start : start + b],
                                    progress=progress, **settings, **kw)
            latents.append(z)
            images.append(self.decode(z))
        images, latents = torch.cat(images), torch.cat(latents)
        conditions = self.attribute_rows(n, attrs) if return_conditions and attrs is not None else None
        out = (images,) + ((latents,) if return_latents else ()) + ((conditions,) if return_conditions else ())
        return out if len(out) > 1 else images

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, n: int = 8, steps: int = 50,
                    attrs=None) -> torch.Tensor:
        """n images between a and b: DDIM-invert both to x_T, slerp, run DDIM (η = 0) back, decode."""
        z0 = self.encode(torch.stack([a, b]))  # a, b: single images (C, H, W), or points for the toys
        cond = self.make_condition(2, attrs)
        z_T = self.diffusion.ddim_invert(self.denoiser, z0, steps=steps, cond=cond)
        weights = torch.linspace(0, 1, n, device=z_T.device)
        path = torch.stack([slerp(z_T[0], z_T[1], float(w)) for w in weights])
        # Unguided and deterministic, as the inversion was: the path then leads back to a and b at its ends.
        return self.decode(self.sample_latents(n, attrs, guidance_scale=1.0, sampler="ddim", steps=steps, eta=0.0,
                                               noise=path, autoguidance_scale=1.0))

    @torch.no_grad()
    def edit(self, images: torch.Tensor, attrs=None, strength: float = 0.4, mode: str = "sdedit",
             guidance_scale: float | None = None, sampler: str | None = None, steps: int | None = None,
             eta: float | None = None, generator=None, noise=None, classifier=None, classifier_scale: float = 1.0,
             progress: bool = False, autoguidance_scale: float | None = None) -> torch.Tensor:
        """Edit images (B, C, H, W) in [-1, 1] towards ``attrs``; returns (B, C, H, W).

        The latents z0 = encode(images) are taken to level t = ⌈strength·T⌉ − 1 and the reverse process
        runs back from there with the asked attributes (classifier-free guidance on a conditional run,
        ``classifier`` guidance when given):
            mode="sdedit": x_t = √ᾱ_t z0 + √(1−ᾱ_t) ε (Meng et al. 2022, SDEdit); strength 1 starts from
                pure noise x_T ~ N(0, I), so the input is ignored;
            mode="invert": x_t from deterministic DDIM inversion of z0 (Song et al. 2021, §4.3), which keeps
                more of the input's layout; with DDIM η = 0 and no attribute change it gives z0 back up to
                the discretisation error.
        Settings left None are the run's (``sampling_settings``), except that ``mode="invert"`` regenerates
        with DDIM at η = 0 unless told: the inverted x_t leads back to the image only along the deterministic
        path the inversion took (on the exact Gaussian predictor, 50 steps from strength 0.6: max error 0.20
        with DDIM, 0.41 with DPM-Solver++).
        ``strength`` 0 returns the reconstruction decode(encode(images)); higher strengths reach the asked
        attributes more often and keep less of the input (bench/attribute_sampling.py --edit-strength
        measures both; on shapes 0.4 is the knee). ``steps`` is the step count of
        a full chain; a partial one takes the same share of them. ``noise`` (B, *latent_shape): the ε
        of SDEdit.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1] (0: the reconstruction, 1: all noise), got {strength}")
        if mode not in ("sdedit", "invert"):
            raise ValueError(f"edit mode {mode!r}: use 'sdedit' or 'invert'")
        if mode == "invert":  # back along the inversion's own path: DDIM, deterministic (unless told otherwise)
            sampler = sampler or "ddim"  # DPM-Solver++ regenerating a DDIM inversion doubled the round-trip error
            eta = 0.0 if eta is None else eta
        s = self.sampling_settings(sampler, steps, eta, guidance_scale,  # refused before the images are encoded
                                   autoguidance_scale=autoguidance_scale)
        if attrs is not None and classifier is None:
            self.check_conditional()
        z0 = self.encode(images)
        if strength == 0.0:
            return self.decode(z0)
        steps = s["steps"]
        T = self.diffusion.num_timesteps
        start_t = max(0, math.ceil(strength * T) - 1)
        k = None if steps is None else max(1, min(start_t + 1, round(steps * (start_t + 1) / T)))
        if mode == "sdedit":
            if noise is None:
                gen_device = generator.device if generator is not None else z0.device
                noise = torch.randn(z0.shape, generator=generator, device=gen_device).to(z0.device)
            t = torch.full((z0.shape[0],), start_t, dtype=torch.long, device=z0.device)
            x = noise if strength == 1.0 else self.diffusion.q_sample(z0, t, noise.to(z0.device))
        else:  # the unconditional model inverts: the input's own attributes are unknown
            x = self.diffusion.ddim_invert(self.denoiser, z0, steps=k, start_t=start_t, progress=progress)
        z = self.sample_latents(z0.shape[0], attrs, s["guidance_scale"], s["sampler"], k, s["eta"], generator, x,
                                progress, classifier=classifier, classifier_scale=classifier_scale, start_t=start_t,
                                autoguidance_scale=s["autoguidance_scale"])
        return self.decode(z)

    def latent_mask(self, mask: torch.Tensor, images_shape: tuple) -> torch.Tensor:
        """A pixel mask (B or 1, 1, H, W), 1 = keep, 0 = fill, on the latent grid: (B or 1, 1, h, w) of 0/1.

        Rule: a latent cell is known only if ALL the f×f pixels it covers are known (a min-pool by the
        downsampling factor f = H/h). A cell whose pixels are partly to be filled is generated: its code mixes
        in the pixels that must be regenerated, so keeping it would copy part of what the user asked to replace
        (and the cell's receptive field in the encoder reaches wider still; paste-back restores the kept pixels
        exactly afterwards). Without an autoencoder the "latents" are the data, and the mask is used as given
        (broadcastable to the data). Bad shapes or values raise ValueError (one line), and so does a mask that is
        1 everywhere (nothing to fill). A mask that is 0 everywhere is allowed: nothing is kept, so the fills are
        plain samples (as from :meth:`sample` with the same attributes).
        """
        mask = torch.as_tensor(mask)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("the inpainting mask must hold only 0 (fill) and 1 (keep)")
        if self.autoencoder is None:
            try:
                torch.broadcast_shapes(mask.shape, tuple(images_shape))
            except RuntimeError:
                raise ValueError(f"the mask's shape {tuple(mask.shape)} does not broadcast to the data's "
                                 f"{tuple(images_shape)}") from None
            return check_fills_something(mask.float())
        B, _, H, W = images_shape
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, B) or tuple(mask.shape[2:]) != (H, W):
            raise ValueError(f"the mask must be (1 or {B}, 1, {H}, {W}) like the images (1 keep, 0 fill), got "
                             f"{tuple(mask.shape)}")
        if len(self.latent_shape) != 3:
            raise ValueError(f"inpainting needs a spatial latent grid; this run's latents are vectors "
                             f"{self.latent_shape}")
        h, w = self.latent_shape[1:]
        if H % h or W % w or H // h != W // w:
            raise ValueError(f"images {H}×{W} do not tile the {h}×{w} latent grid evenly")
        f = H // h
        return check_fills_something(mask.float()).view(mask.shape[0], 1, h, f, w, f).amin(dim=(3, 5))

    @torch.no_grad()
    def inpaint(self, images: torch.Tensor, mask: torch.Tensor, attrs=None, guidance_scale: float | None = None,
                sampler: str | None = None, steps: int | None = None, eta: float | None = None, resample: int = 1,
                paste_back: bool = True, generator=None, progress: bool = False,
                autoguidance_scale: float | None = None) -> torch.Tensor:
        """Fill the masked-out part of images (B, C, H, W) in [-1, 1]; returns (B, C, H, W).

        ``mask`` (B or 1, 1, H, W): 1 = keep, 0 = fill; it goes to the latent grid by :meth:`latent_mask`
        (a cell is known only if all its pixels are). The reverse process runs from noise with the known
        latent cells replaced at every step by ``q_sample`` of the encoded image at that step's level, and by
        the encoded image itself at the end (RePaint, Lugmayr et al. 2022, Eq. 8); ``resample=R`` redoes each
        step R times with a jump back up in between (their Algorithm 1), which harmonises the fill with the
        kept part; it needs a stochastic sampler (ddpm, or ddim with eta > 0). ``attrs`` (conditional runs)
        and ``guidance_scale`` steer the fill as in :meth:`sample`. None for sampler, steps, eta or
        guidance_scale takes the run's ``sample:`` settings (:meth:`sampling_settings`). ``paste_back``
        copies the kept pixels of ``images`` over the decoded result, so what the user kept is kept exactly
        (the decoder alone reproduces it only up to the autoencoder's reconstruction error).
        """
        settings = self.sampling_settings(sampler, steps, eta, guidance_scale, autoguidance_scale=autoguidance_scale)
        if attrs is not None:
            self.check_conditional()
        images = images.to(self.device)
        latent_mask = self.latent_mask(mask, tuple(images.shape)).to(self.device)
        z0 = self.encode(images)
        self.diffusion._check_inpainting((z0, latent_mask), resample, tuple(z0.shape), settings["sampler"],
                                         settings["eta"])  # one line before the reverse process, not after
        z = self.sample_latents(z0.shape[0], attrs, settings["guidance_scale"], settings["sampler"], settings["steps"],
                                settings["eta"], generator, None, progress, known=(z0, latent_mask),
                                resample=resample, autoguidance_scale=settings["autoguidance_scale"])
        out = self.decode(z)
        if paste_back:
            out = torch.where(torch.as_tensor(mask).to(self.device).bool(), images, out)
        return out

    def read_image(self, path: str | Path) -> torch.Tensor:
        """An image file as (C, H, W) in [-1, 1] in the layout of the run's data: the autoencoder's channels
        (greyscale or RGB) and size, centre-cropped (to the dataset's ``crop`` option when it has one)."""
        path = Path(path)
        if self.autoencoder is None:
            raise ValueError("this run diffuses data points directly, not images; editing needs a run with an "
                             "autoencoder (ae.run)")
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        channels, height, width = self.autoencoder.sample_shape
        if height != width or channels not in (1, 3):
            raise ValueError(f"images of this run are {channels}×{height}×{width}; only square greyscale or RGB "
                             f"images can be read in")
        crop = self.config.get("data", {}).get("options", {}).get("crop")
        try:
            return to_unit_range(load_image(path, height, channels, crop=crop))
        except OSError as e:  # PIL's UnidentifiedImageError, truncated files
            raise ValueError(f"cannot read {path} as an image ({type(e).__name__}); give a PNG or JPEG") from None

    def load_classifier(self, folder: str | Path):
        """The ``train_classifier.py`` classifier in ``folder``, checked to belong to this run's latents."""
        return load_classifier(folder, ldm=self, device=self.device)

    # -- loading and export -----------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "last", use_ema: bool = True,
                 device: str | torch.device = "cpu") -> LatentDiffusion:
        """Rebuild a trained stage-two run from ``runs/<name>`` (or an exported folder, see ``from_pretrained``).

        Works from any working directory and after the run folder was moved or copied: the run carries
        its own copy of the autoencoder (``runs/<name>/autoencoder/``). ``checkpoint``: "last" or "best";
        ``use_ema``: the EMA weights (what the training grids show) instead of the raw ones.
        """
        if is_bundle(run_dir):
            return cls.from_pretrained(run_dir, device=device)
        return cls(**ldm_parts_from_run(run_dir, checkpoint, use_ema, device))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> LatentDiffusion:
        """Load a ``save_pretrained`` folder (config.json + safetensors); never unpickles anything.

        Its ``manifest.json`` is checked first: a file changed, missing or added since the export, or an
        autoencoder other than the one the diffusion was trained on, is one ``CheckpointError`` line naming
        the file. A bundle from before manifests loads with a one-line note."""
        return cls(**ldm_parts_from_bundle(folder, device))

    def save_pretrained(self, folder: str | Path) -> None:
        """Export to ``folder``: ``config.json`` (diffusion, denoiser, latent shape, attribute schema, sampling
        defaults, the training data section), ``denoiser.safetensors``, ``normaliser.safetensors`` and the
        autoencoder as ``autoencoder/{config.json,model.safetensors,manifest.json}``, and ``manifest.json`` with
        the sha256 of every file. The folder appears all at once (a failure leaves none); an earlier bundle
        there is replaced. The weights are the ones loaded (EMA by default). See ``latentdiff.loading``."""
        save_ldm_bundle(self, folder)


def autoencoder_hash(autoencoder) -> str | None:
    """The sha256 of an autoencoder's weights as its bundle stores them (None without one)."""
    return None if autoencoder is None else autoencoder_copy_hash(autoencoder)


def check_fills_something(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (1 keep, 0 fill), refused when it is 1 everywhere: inpainting would give the input back."""
    if bool(mask.bool().all()):
        raise ValueError("the inpainting mask is all 1 (keep): nothing to fill; mark the part to fill with 0")
    return mask


def half_mask(height: int, width: int, half: str = "right") -> torch.Tensor:
    """An inpainting mask (1, 1, height, width) that keeps one half (1) and fills the other (0): ``half`` is the
    filled one, "right" or "lower" (``inpaint``, bench/inpainting.py, the gallery)."""
    if half not in ("right", "lower"):
        raise ValueError(f"half={half!r}: give 'right' or 'lower', the half to fill")
    mask = torch.ones(1, 1, height, width)
    if half == "right":
        mask[..., width // 2:] = 0
    else:
        mask[..., height // 2:, :] = 0
    return mask


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation (Shoemake, 1985), the right path between two Gaussian noise draws."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-6:
        return ((1 - w) * a + w * b)
    s = torch.sin(omega)
    return ((torch.sin((1 - w) * omega) / s) * a.double() + (torch.sin(w * omega) / s) * b.double()).to(a.dtype)
