"""GaussianDiffusion: the DDPM of Ho et al. 2020 over any tensor (B, ...).

Equation numbers are those of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models") unless
another paper is named. Timesteps are int64 indices 0..T−1; index i is the paper's t = i + 1.
The schedule lives in float64 on the CPU; each coefficient is gathered, then cast to the dtype and
device of the tensor it multiplies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from latentdiff.guidance import apply_classifier_guidance, guided_output, repeat_condition
from latentdiff.samplers import SAMPLERS, ddim_invert_loop, sample_loop
from latentdiff.schedules import make_beta_schedule, posterior_coefficients, spaced_timesteps

VARIANCES = ("beta_tilde", "beta")
PREDICTIONS = ("eps", "v", "x0")
LOSS_WEIGHTINGS = ("simple", "vlb", "min_snr")


class ReverseStep(NamedTuple):
    """p_θ(x_{t−1} | x_t) = N(mean, variance) and the predictions it was built from (all like x_t)."""

    mean: torch.Tensor
    variance: torch.Tensor  # (B, 1, ..., 1)
    x0_hat: torch.Tensor
    eps_hat: torch.Tensor


def check_guidance_interval(interval) -> tuple[float, float]:
    """``guidance_interval`` as (lo, hi) floats, or one ValueError line: it must satisfy 0 <= lo < hi <= 1."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two fractions of T (lo, hi), got {interval!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo < hi <= 1, got {interval!r}")
    return lo, hi


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats (closed form for Gaussians)."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def gaussian_nll(x, mean, logvar):
    """−log N(x; mean, e^logvar) per element, in nats (a continuous density, not a discretised one)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(params(), None) if params is not None else None
    return first.device if first is not None else torch.device("cpu")


class GaussianDiffusion:
    """Forward process, posterior, reverse process, training loss, samplers and variational bound.

    Args:
        num_timesteps: T (at least 2).
        beta_schedule: "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal 2021).
        beta_start, beta_end: β_1 and β_T of the linear schedule.
        variance: reverse-process variance σ_t² — "beta_tilde" (β̃_t, Eq. 7) or "beta" (β_t); Ho et al.
            §3.2 found both give similar samples. For the bound, β̃_1 = 0 is replaced by β̃_2 (as in
            Nichol & Dhariwal's code): σ_1² is the variance of the decoder p(x_0 | x_1), which would
            otherwise be a delta and make L_0 infinite.
        prediction: what the network outputs — "eps" (ε, Eq. 11), "x0", or "v" = √ᾱ ε − √(1−ᾱ) x0
            (Salimans & Ho 2022, §4).
        loss_weighting: per-timestep weight of the squared error in the prediction's own space —
            "simple" (1: L_simple, Eq. 14, for ε), "vlb" (the weights that make the loss equal L_{t−1}
            per dimension, Eq. 12), "min_snr" (min(SNR, γ) in x0 space, Hang et al. 2023).
        min_snr_gamma: γ of "min_snr".
    """

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, variance: str = "beta_tilde", prediction: str = "eps",
                 loss_weighting: str = "simple", min_snr_gamma: float = 5.0):
        for name, value, allowed in (("variance", variance, VARIANCES),
                                     ("prediction", prediction, PREDICTIONS),
                                     ("loss_weighting", loss_weighting, LOSS_WEIGHTINGS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.num_timesteps = num_timesteps
        self.variance, self.prediction, self.loss_weighting = variance, prediction, loss_weighting
        self.min_snr_gamma = min_snr_gamma

        betas = make_beta_schedule(beta_schedule, num_timesteps, beta_start, beta_end)
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        self.snr = self.alphas_cumprod / (1 - self.alphas_cumprod)  # signal-to-noise ratio ᾱ/(1−ᾱ)
        _, self.posterior_mean_coef1, self.posterior_mean_coef2, self.posterior_variance = \
            posterior_coefficients(self.alphas_cumprod, self.alphas_cumprod_prev)
        # β̃_1 = 0: log and σ_1² use β̃_2 instead (see the class docstring).
        clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        self.posterior_log_variance_clipped = clipped.log()
        self.reverse_variance = betas.clone() if variance == "beta" else clipped
        self.loss_weights = self._loss_weights()

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] (float64 schedule) as (B, 1, ..., 1) in the dtype/device of ``like``."""
        out = values[t.long().cpu()].to(like.dtype).to(like.device)  # cast on the CPU: MPS has no float64
        return out.view(-1, *([1] * (like.dim() - 1)))

    def _check_t(self, t: torch.Tensor, batch: int) -> None:
        if t.shape != (batch,):
            raise ValueError(f"t must be a ({batch},) tensor of timestep indices, got shape {tuple(t.shape)}")
        if t.min() < 0 or t.max() >= self.num_timesteps:
            raise ValueError(f"timestep indices must lie in 0..{self.num_timesteps - 1}, got "
                             f"{int(t.min())}..{int(t.max())}")

    def _loss_weights(self) -> torch.Tensor:
        """(T,) float64 per-timestep weights of the squared prediction error (see the class docstring).

        Eq. 12 gives the ε-space weight β_t² / (2 σ_t² α_t (1 − ᾱ_t)) per dimension. Errors in other spaces
        map to ε space linearly: ε − ε̂ = −√SNR (x0 − x̂0) and ε − ε̂ = √ᾱ (v − v̂), hence the factors.
        """
        snr = self.snr
        if self.loss_weighting == "simple":
            return torch.ones_like(snr)
        if self.loss_weighting == "vlb":
            return self.vlb_weights()
        clipped = snr.clamp(max=self.min_snr_gamma)  # Hang et al. 2023: x0-space weight min(SNR, γ)
        return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[self.prediction]

    def vlb_weights(self, space: str | None = None) -> torch.Tensor:
        """(T,) float64 λ_t with L_{t−1} = D · λ_t · mean_d (target − prediction)² + c_t (Eq. 12).

        In ε space λ_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t)); at index 0 the same λ makes L_0's squared term, since
        μ_θ(x_1, 1) = x̂0 there and ‖x0 − x̂0‖² = (1 − ᾱ_1)/ᾱ_1 ‖ε − ε̂‖². Errors in other spaces map to ε space
        linearly: ε − ε̂ = −√SNR (x0 − x̂0) and ε − ε̂ = √ᾱ (v − v̂), hence the factors. ``space``: "eps", "x0"
        or "v" (default: this diffusion's ``prediction``). The constants c_t are ``vlb_constants``.
        """
        space = space or self.prediction
        eps_weight = self.betas**2 / (2 * self.reverse_variance * self.alphas * (1 - self.alphas_cumprod))
        to_eps = {"eps": torch.ones_like(self.snr), "x0": self.snr, "v": self.alphas_cumprod}[space]
        return eps_weight * to_eps

    def vlb_constants(self, dims: int) -> torch.Tensor:
        """(T,) float64 c_t of ``vlb_weights``, in nats for inputs of ``dims`` dimensions: the parts of the bound's
        terms that no network can change. For t ≥ 2 the variance mismatch of KL(N(μ̃, β̃_t) ‖ N(μ_θ, σ_t²)),
        (D/2)(log(σ_t²/β̃_t) + β̃_t/σ_t² − 1), zero with σ_t² = β̃_t; for L_0 the normaliser (D/2) log 2πσ_1².
        """
        ratio = self.reverse_variance[1:] / self.posterior_variance[1:]
        kl_constant = 0.5 * dims * (ratio.log() + 1 / ratio - 1)
        decoder_constant = 0.5 * dims * torch.log(2 * math.pi * self.reverse_variance[:1])
        return torch.cat([decoder_constant, kl_constant])

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x0) ‖ N(0, I)) per example (B,) nats, differentiable in x0 (Eq. 5's first term)."""
        last = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device)
        mean = self._gather(self.sqrt_alphas_cumprod, last, x0) * x0
        logvar = self._gather((1 - self.alphas_cumprod).log(), last, x0)
        zeros = torch.zeros_like(mean)
        return normal_kl(mean, logvar.expand_as(mean), zeros, zeros).flatten(1).sum(1)

    def importance_distribution(self) -> torch.Tensor:
        """(T,) float64 r_t ∝ λ_t^ε ᾱ_t: the expected error term of L_{t−1} when the (normalised) latents are
        N(0, I) and the predictor is that distribution's exact one (E‖ε − ε̂‖² = D ᾱ_t per example). Drawing t
        from it and dividing by r_t estimates Σ_t L_{t−1} with far less variance than uniform t, whose draws
        near t = 1 carry most of the sum. The discrete form of LSGM's r(t) ∝ β(t)(1 − σ_t²)/σ_t² = d log σ_t²/dt
        (Vahdat et al. 2021, §3.3; docs/math.md, "Joint training")."""
        r = self.vlb_weights("eps") * self.alphas_cumprod
        return r / r.sum()

    # -- forward process and posterior -------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x0) (Eq. 4). x0, noise: (B, ...); t: (B,)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return self._gather(self.sqrt_alphas_cumprod, t, x0) * x0 + \
            self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t−1} | x_t, x0) = N(μ̃_t, β̃_t I) (Eqs. 6-7). Returns mean (B, ...), variance (B, 1, ..., 1)."""
        mean = self._gather(self.posterior_mean_coef1, t, x_t) * x0 + \
            self._gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._gather(self.posterior_variance, t, x_t)

    # -- conversions between predictions ---------------------------------------------------------------
    def predict_x0_from_eps(self, x_t, t, eps):
        """x0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t, Eq. 4 solved for x0."""
        return (x_t - self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / \
            self._gather(self.sqrt_alphas_cumprod, t, x_t)

    def predict_eps_from_x0(self, x_t, t, x0):
        """ε = (x_t − √ᾱ_t x0) / √(1−ᾱ_t), Eq. 4 solved for ε."""
        return (x_t - self._gather(self.sqrt_alphas_cumprod, t, x_t) * x0) / \
            self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def velocity(self, x0, eps, t):
        """v = √ᾱ_t ε − √(1−ᾱ_t) x0 (Salimans & Ho 2022, §4)."""
        return self._gather(self.sqrt_alphas_cumprod, t, x0) * eps - \
            self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def predict_x0_from_v(self, x_t, t, v):
        """x0 = √ᾱ_t x_t − √(1−ᾱ_t) v (Salimans & Ho 2022, §4; uses ᾱ + (1 − ᾱ) = 1)."""
        return self._gather(self.sqrt_alphas_cumprod, t, x_t) * x_t - \
            self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def predict_eps_from_v(self, x_t, t, v):
        """ε = √(1−ᾱ_t) x_t + √ᾱ_t v (Salimans & Ho 2022, §4)."""
        return self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + \
            self._gather(self.sqrt_alphas_cumprod, t, x_t) * v

    def eps_and_x0(self, model_output, x_t, t):
        """(ε̂, x̂0) from the network output, whatever ``prediction`` it makes. All (B, ...)."""
        if self.prediction == "eps":
            return model_output, self.predict_x0_from_eps(x_t, t, model_output)
        if self.prediction == "x0":
            return self.predict_eps_from_x0(x_t, t, model_output), model_output
        return self.predict_eps_from_v(x_t, t, model_output), self.predict_x0_from_v(x_t, t, model_output)

    # -- reverse process -------------------------------------------------------------------------------
    def predict(self, model, x_t: torch.Tensor, t: torch.Tensor, cond=None, guidance_scale: float = 1.0,
                uncond=None, classifier_guidance=None, clip_denoised: bool = False,
                guidance_interval: tuple[float, float] | None = None, autoguidance=None):
        """(ε̂, x̂0) at (x_t, t) after classifier-free guidance, autoguidance, classifier guidance and clipping.

        Args:
            model: ``model(x_t, t, cond)`` → tensor like x_t (ε, x0 or v per ``prediction``).
            x_t: (B, ...); t: (B,) int64 indices.
            cond, uncond, guidance_scale: see :func:`latentdiff.guidance.classifier_free_guidance`.
            classifier_guidance: None or ``(grad_log_prob, scale)``, see
                :func:`latentdiff.guidance.apply_classifier_guidance`.
            clip_denoised: clamp x̂0 to [−1, 1] and recompute ε̂ from it (for data known to lie there).
            autoguidance: None or ``(guide, scale)``: a weaker version of ``model`` with the same signature and
                prediction, and w_a; see :func:`latentdiff.guidance.guided_output`.
            guidance_interval: None (guide at every level), or (lo, hi) with 0 ≤ lo < hi ≤ 1: guide (every kind)
                only where lo ≤ (t+1)/T ≤ hi, and use the plain conditional model elsewhere (Kynkäänniemi et
                al. 2024, "Applying guidance in a limited interval"). Guidance at the noisiest levels is where
                the layout (size, shape) is chosen; there a high w sharpens every attribute towards the ones
                its implicit classifier finds easiest, not only the asked one.
        """
        if guidance_interval is not None and not self.in_guidance_interval(t, guidance_interval):
            guidance_scale, classifier_guidance, autoguidance = 1.0, None, None
        guide, autoguidance_scale = None, 1.0
        if autoguidance is not None:
            if not (isinstance(autoguidance, tuple | list) and len(autoguidance) == 2):
                raise ValueError("autoguidance must be a pair (guide model, scale)")
            guide, autoguidance_scale = autoguidance
        out = guided_output(model, x_t, t, cond, uncond, guidance_scale, guide, autoguidance_scale)
        if out.shape != x_t.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for inputs {tuple(x_t.shape)}; "
                             f"it must return a tensor shaped like x_t")
        eps, x0 = self.eps_and_x0(out.to(x_t.dtype), x_t, t)
        if classifier_guidance is not None:
            if not (isinstance(classifier_guidance, tuple | list) and len(classifier_guidance) == 2):
                raise ValueError("classifier_guidance must be a pair (grad_log_prob(x_t, t), scale)")
            grad_log_prob, scale = classifier_guidance
            root = self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)
            eps = apply_classifier_guidance(eps, x_t, t, root, grad_log_prob, scale)
            x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return eps, x0

    def in_guidance_interval(self, t: torch.Tensor, interval: tuple[float, float]) -> bool:
        """Whether timestep indices ``t`` (all equal, as in the samplers) lie in ``interval`` (fractions of T)."""
        lo, hi = check_guidance_interval(interval)
        level = (int(t.reshape(-1)[0]) + 1) / self.num_timesteps
        return lo <= level <= hi

    def p_mean_variance(self, model, x_t: torch.Tensor, t: torch.Tensor, cond=None,
                        **predict_kwargs) -> ReverseStep:
        """p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I) with μ_θ = μ̃_t(x_t, x̂0), Eq. 7 with x̂0 in place of x0.

        Without clipping or guidance this is μ_θ = (x_t − β_t/√(1−ᾱ_t) ε̂) / √α_t (Eq. 11); going through
        x̂0 lets clipping and x0/v predictions share one formula. ``predict_kwargs`` go to :meth:`predict`.
        """
        eps, x0 = self.predict(model, x_t, t, cond, **predict_kwargs)
        mean, _ = self.q_posterior(x0, x_t, t)
        return ReverseStep(mean, self._gather(self.reverse_variance, t, x_t), x0, eps)

    # -- training ------------------------------------------------------------------------------------
    def training_loss(self, model, x0: torch.Tensor, cond=None, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None, reduce: bool = True, return_t: bool = False,
                      generator: torch.Generator | None = None):
        """Weighted squared error of the network's prediction at a random t (Eq. 14 for "simple" with ε).

        Per example: w_t · mean over dimensions of ‖target − model(x_t, t, cond)‖², with x_t from Eq. 4
        and target ε, x0 or v. With loss_weighting="vlb" the per-example value times the number of
        dimensions D is L_{t−1} minus its constant (Eq. 12).

        Args:
            model: ``model(x_t, t, cond)`` → tensor like x_t.
            x0: (B, ...) clean inputs; cond: the model's condition for x0 (or None).
            t: (B,) indices, uniform over 0..T−1 when None; noise: (B, ...) ε, standard normal when None.
            reduce: return the batch mean (a scalar); otherwise the (B,) per-example losses.
            return_t: also return the t used, as ``(loss, t)``.
            generator: draws t and noise reproducibly (on the generator's device).
        Returns:
            loss, or (loss, t).
        """
        batch = x0.shape[0]
        gen_device = generator.device if generator is not None else x0.device
        if t is None:
            t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device)
            t = t.to(x0.device)
        self._check_t(t, batch)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype)
            noise = noise.to(x0.device)
        if noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, x0 {tuple(x0.shape)}; they must match")
        error = self.prediction_error(model, x0, t, noise, cond)
        per_example = error * self._gather(self.loss_weights, t, error).flatten()
        loss = per_example.mean() if reduce else per_example
        return (loss, t) if return_t else loss

    def prediction_error(self, model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond=None
                         ) -> torch.Tensor:
        """mean_d (target − model(x_t, t, cond))² per example (B,), x_t from Eq. 4, the target ε, x0 or v per
        ``prediction``: the unweighted core of the training loss and of ``bound_estimate``."""
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t, cond)
        if out.shape != x0.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for inputs {tuple(x0.shape)}; "
                             f"it must return a tensor shaped like x_t")
        if self.prediction == "eps":
            target = noise
        elif self.prediction == "x0":
            target = x0
        else:
            target = self.velocity(x0, noise, t)
        return (out - target).pow(2).flatten(1).mean(1)

    def bound_estimate(self, model, x0: torch.Tensor, cond=None, importance_sampling: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """An unbiased one-timestep estimate of ``nll_bound``'s total per example (B,), differentiable in x0 and
        in the model: the cross-entropy term of a latent-diffusion ELBO (LSGM, Vahdat et al. 2021, Eq. 9, in
        discrete time; docs/math.md, "Joint training").

            L = L_T + Σ_t c_t + Σ_t D λ_t e_t ≈ L_T + Σ_t c_t + D λ_s e_s / r_s,   s ~ r,

        with e_t = mean_d (target − prediction)² at one draw x_t ~ q(x_t | x0) (``prediction_error``), λ_t and
        c_t from ``vlb_weights`` / ``vlb_constants`` (Eq. 12: every term, L_0 included, in one formula) and L_T
        exact (``prior_term``). ``importance_sampling``: r from ``importance_distribution``; otherwise r_t = 1/T.
        x0: (B, ...); cond: the model's condition; generator: draws s and the noise.
        """
        batch, dims, T = x0.shape[0], x0[0].numel(), self.num_timesteps
        gen_device = generator.device if generator is not None else x0.device
        r = self.importance_distribution() if importance_sampling else torch.full((T,), 1.0 / T, dtype=torch.float64)
        on_cpu = generator if generator is not None and gen_device.type == "cpu" else None  # r lives on the CPU
        t = torch.multinomial(r.float(), batch, replacement=True, generator=on_cpu).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
        error = self.prediction_error(model, x0, t, noise, cond)
        weight = self._gather(self.vlb_weights() / r, t, error).flatten()
        return self.prior_term(x0) + float(self.vlb_constants(dims).sum()) + dims * weight * error

    # -- sampling ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model, shape, sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
               cond=None, guidance_scale: float = 1.0, uncond=None, generator: torch.Generator | None = None,
               progress: bool = False, clip_denoised: bool = False, timestep_spacing: str | None = None,
               noise: torch.Tensor | None = None, return_trajectory: bool = False, trajectory_every: int = 1,
               classifier_guidance=None, device=None, start_t: int | None = None, known=None, resample: int = 1,
               guidance_interval: tuple[float, float] | None = None, autoguidance=None):
        """Draw x0 ~ p_θ by running the reverse process from x_T ~ N(0, I) (or from x_{start_t}).

        Args:
            model: ``model(x_t, t, cond)`` → tensor like x_t.
            shape: (B, ...) of the samples.
            sampler: "ddpm" (ancestral, Algorithm 2, σ_t² per ``variance``), "ddim" (Song et al. 2021,
                Eq. 12) or "dpm_solver++" (Lu et al. 2022, DPM-Solver++(2M), Algorithm 2: a second-order
                multistep solver of the probability-flow ODE in x0 form, deterministic; for 10-20 steps, best
                with ``timestep_spacing="logsnr"`` or "trailing"; see ``samplers.dpm_solver_pp_step``).
            steps: number of reverse steps (None: all T). DDPM with fewer steps uses the respaced
                process of Nichol & Dhariwal 2021 §4 (its β's recomputed from ᾱ on the subsequence).
            eta: DDIM's η (0: deterministic; 1: the ancestral sampler with σ² = β̃). DDIM only.
            cond, guidance_scale, uncond: classifier-free guidance (``uncond`` needed when w != 1).
            guidance_interval: None, or (lo, hi) fractions of T: guide only there (see ``predict``).
            autoguidance: None or ``(guide, w_a)``: guide with a weaker version of the model (Karras et al. 2024;
                see ``predict``), alone or on top of classifier-free guidance.
            generator: makes x_T and every step's noise reproducible.
            progress: show a tqdm bar.
            clip_denoised: clamp x̂0 to [−1, 1] at every step (off: latents are unbounded).
            timestep_spacing: "linspace", "leading", "trailing" or "logsnr" (uniform in log α/σ; see
                ``schedules.spaced_timesteps``); None: "linspace" for every sampler. For dpm_solver++ the two
                best choices disagree: with the exact predictor of Gaussian data "logsnr" wins (its steps are
                of equal length in λ, so the second-order extrapolation stays accurate; tests/test_samplers.py),
                while on a trained shapes denoiser "linspace" gave the better judge FD at 10 steps (19.3 vs
                25.7 for logsnr, 19.7 for trailing; DDIM 50: 18.9; bench/quality_vs_steps.py
                --timestep-spacing), so the default follows the trained model.
            noise: x_T to start from (B, ...), instead of drawing it.
            return_trajectory: also return a dict {"t": (K,), "x_t": (K, B, ...), "x0_pred": (K, B, ...)}
                of the state and x̂0 at every ``trajectory_every``-th step and at the last step.
            classifier_guidance: None or ``(grad_log_prob(x_t, t), scale)``.
            device: where to sample when ``noise`` is not given (default: the model's device).
            start_t: None, or run only the part of the chain below timestep index ``start_t``: the
                ``steps`` (None: all start_t + 1) timesteps are spaced over 0..start_t, and ``noise`` is
                the state at level ᾱ_{start_t}, e.g. ``q_sample`` of data for SDEdit (Meng et al. 2022).
            known: None, or ``(x0_known, mask)`` for inpainting (RePaint, Lugmayr et al. 2022): x0_known (B, ...)
                like the samples, mask broadcastable to it with 1 where x0_known is kept and 0 where it is to be
                generated. After every step the known cells are replaced by a fresh ``q_sample`` of x0_known at
                the new level, after the last step by x0_known exactly. With a deterministic sampler (DDIM η = 0,
                dpm_solver++) the replacement alone still conditions the fill (the unknown cells see the noised
                known ones at every step), as in most latent inpainting pipelines.
            resample: RePaint's R (their Algorithm 1): every step but the last is redone R times, going back one
                step by q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s) x_s, (1 − ᾱ_t/ᾱ_s) I) in between, which harmonises the fill
                with the known cells. It needs a stochastic reverse step (ddpm, or ddim with η > 0): a
                deterministic step from the re-noised state does not draw from p(x_s | x_t), so the jumps are no
                longer the resampling RePaint's argument rests on; those samplers refuse R > 1.
        Returns:
            samples (B, ...) (the last step returns x̂0), or (samples, trajectory).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if sampler != "ddim" and eta != 0.0:
            raise ValueError("eta applies to the ddim sampler only; use sampler='ddim' (eta=1 is ancestral)")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if trajectory_every < 1:
            raise ValueError(f"trajectory_every must be >= 1, got {trajectory_every}")
        if timestep_spacing is None:
            timestep_spacing = "linspace"
        timesteps = self.spaced_timesteps(steps, timestep_spacing, start_t)
        if start_t is not None and int(timesteps[-1]) != start_t:
            raise ValueError(f"timestep_spacing={timestep_spacing!r} does not start at start_t={start_t}; "
                             f"use 'linspace', 'trailing' or 'logsnr' for a partial chain")
        known = self._check_inpainting(known, resample, shape, sampler, eta)
        if guidance_interval is not None:
            guidance_interval = check_guidance_interval(guidance_interval)
        if noise is None:
            device = device or _model_device(model)
            gen_device = generator.device if generator is not None else device
            noise = torch.randn(tuple(shape), generator=generator, device=gen_device).to(device)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, not shape={tuple(shape)}; match them")
        return sample_loop(self, model, noise, timesteps, sampler=sampler, eta=eta, generator=generator,
                           progress=progress, known=known, resample=resample,
                           trajectory_every=trajectory_every if return_trajectory else None,
                           cond=cond, guidance_scale=guidance_scale, uncond=uncond,
                           classifier_guidance=classifier_guidance, clip_denoised=clip_denoised,
                           guidance_interval=guidance_interval, autoguidance=autoguidance)

    @staticmethod
    def _check_inpainting(known, resample, shape, sampler: str, eta: float):
        """``known`` of ``sample`` checked (one line per mistake) and returned as (x0_known, mask) or None."""
        if not isinstance(resample, int) or isinstance(resample, bool) or resample < 1:
            raise ValueError(f"resample must be an integer >= 1 (1: no RePaint jumps), got {resample!r}")
        if known is None:
            if resample != 1:
                raise ValueError("resample applies to inpainting only: give known=(x0_known, mask)")
            return None
        if not (isinstance(known, tuple | list) and len(known) == 2):
            raise ValueError("known must be a pair (x0_known, mask) with mask 1 where x0_known is kept")
        x0_known, mask = (torch.as_tensor(v) for v in known)
        if tuple(x0_known.shape) != tuple(shape):
            raise ValueError(f"known x0 has shape {tuple(x0_known.shape)}, not the samples' {tuple(shape)}")
        try:
            torch.broadcast_shapes(mask.shape, x0_known.shape)
        except RuntimeError:
            raise ValueError(f"the inpainting mask's shape {tuple(mask.shape)} does not broadcast to the samples' "
                             f"{tuple(shape)}") from None
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("the inpainting mask must hold only 0 (generate) and 1 (keep)")
        if resample > 1 and (sampler == "dpm_solver++" or (sampler == "ddim" and eta == 0.0)):
            raise ValueError(f"resample={resample} needs a stochastic sampler (ddpm, or ddim with eta > 0); "
                             f"{sampler}{' with eta=0' if sampler == 'ddim' else ''} is deterministic")
        return x0_known, mask.to(x0_known.device)

    @torch.no_grad()
    def ddim_invert(self, model, x0: torch.Tensor, steps: int | None = None, cond=None,
                    guidance_scale: float = 1.0, uncond=None, timestep_spacing: str = "linspace",
                    progress: bool = False, start_t: int | None = None, autoguidance=None) -> torch.Tensor:
        """x_T from x0 by running deterministic DDIM (η = 0) forwards (Song et al. 2021, §4.3, ODE Eq. 14).

        The inverse of ``sample(sampler="ddim", eta=0, steps=steps, noise=x_T)`` up to the discretisation
        error of evaluating ε̂ at the current point instead of the next one. ``start_t`` stops the
        inversion at level ᾱ_{start_t} (the ``start_t`` of ``sample`` that takes it back).
        """
        timesteps = self.spaced_timesteps(steps, timestep_spacing, start_t)
        return ddim_invert_loop(self, model, x0, timesteps, progress=progress, cond=cond,
                                guidance_scale=guidance_scale, uncond=uncond, autoguidance=autoguidance)

    def spaced_timesteps(self, steps: int | None, spacing: str = "linspace", start_t: int | None = None):
        """The ascending (S,) int64 indices a (partial, up to ``start_t``) chain visits; see
        ``schedules.spaced_timesteps`` (the "logsnr" spacing reads this schedule's ᾱ)."""
        n = self._chain_length(start_t)
        return spaced_timesteps(n, steps, spacing, alphas_cumprod=self.alphas_cumprod[:n])

    def _chain_length(self, start_t: int | None) -> int:
        """How many timestep indices a (partial) chain ending at ``start_t`` covers."""
        if start_t is None:
            return self.num_timesteps
        if not 0 <= start_t < self.num_timesteps:
            raise ValueError(f"start_t must be a timestep index from 0 to {self.num_timesteps - 1}, got {start_t}")
        return int(start_t) + 1

    # -- variational bound ------------------------------------------------------------------------------
    def mc_timestep_draws(self, batch: int, k: int, generator: torch.Generator | None = None,
                          gen_device: torch.device | str = "cpu", defensive: float = 0.1):
        """K timestep indices per example in 1..T−1 and their weights, for an unbiased estimate of a sum over
        them, Σ_t L_t ≈ Σ_j w_j L_{t_j}: stratified importance sampling.

        The proposal r_t = (1 − ε) r^IS_t + ε / (T − 1): ``importance_distribution`` restricted to 1..T−1 (the
        terms' expected size for Gaussian latents: most of the sum lies near t = 1), mixed with the uniform
        distribution so that no t has a vanishing probability and no weight exceeds (T − 1) / (ε K) ("defensive"
        importance sampling, Hesterberg 1995). Each example draws u_j uniform in [j/K, (j+1)/K) and t_j =
        F⁻¹(u_j) (F: r's CDF); w_j = 1 / (K r_{t_j}). Unbiased: over the K strata, t is drawn with total
        probability K r_t. The draws are sorted and may repeat a t (a t with r_t > 1/K spans strata).

        Returns:
            (B, K) int64 indices, (B, K) float64 weights, both on the CPU.
        """
        n = self.num_timesteps - 1
        if not 1 <= k <= n:
            raise ValueError(f"mc_timesteps must be in 1..{n} (or None for the exact sum), got {k}")
        r = self.importance_distribution()[1:].cpu()
        r = (1 - defensive) * r / r.sum() + defensive / n
        cdf = r.cumsum(0)
        u = (torch.arange(k) + torch.rand(batch, k, generator=generator, device=gen_device,
                                          dtype=torch.float64).cpu()) / k
        index = torch.searchsorted(cdf, u * cdf[-1]).clamp(max=n - 1)  # cdf[-1]: 1 up to rounding
        return index + 1, 1.0 / (k * r[index])

    @torch.no_grad()
    def nll_bound(self, model, x0: torch.Tensor, cond=None, mc_timesteps: int | None = None,
                  batch_t: int = 10, generator: torch.Generator | None = None,
                  return_terms: bool = False) -> dict:
        """The negative ELBO L = L_T + Σ_{t>1} L_{t−1} + L_0 per example, in nats (Eq. 5).

        L_T = KL(q(x_T|x0) ‖ N(0, I)); L_{t−1} = KL(q(x_{t−1}|x_t, x0) ‖ p_θ(x_{t−1}|x_t)) at one draw
        x_t ~ q(x_t|x0), both closed-form Gaussian KLs; L_0 = −log N(x0; μ_θ(x_1, 1), σ_1² I), a continuous
        Gaussian decoder (so bits/dim can be negative). bpd = L / (D ln 2) with D the size of one example.

        Args:
            model: ``model(x_t, t, cond)`` → tensor like x_t; x0: (B, ...) data; cond: its condition.
            mc_timesteps: None sums every t exactly; K: an unbiased estimate of Σ_{t≥2} L_{t−1} (L_0 is always
                exact) from K draws per example, by stratified importance sampling (``mc_timestep_draws``): far
                less variance than K uniform draws, whose sum is carried by the few near t = 1.
            batch_t: timesteps evaluated per model call (the model sees B · batch_t examples at once).
            generator: for x_t and the Monte Carlo timesteps.
            return_terms: also return "terms" (B, n) per-timestep values, their indices "t" (B, n) (a term at
                index 0 is L_0, at index i ≥ 1 the paper's L_i; n = T, or K + 1 with K draws) and "weights"
                (B, n) float64, each term's weight in the total (1 for L_0 and in the exact sum).
        Returns:
            dict of (B,) float64 tensors: prior, diffusion, decoder, total, bpd (+ terms, t, weights).
        """
        if batch_t < 1:
            raise ValueError(f"batch_t must be >= 1, got {batch_t}")
        T, batch = self.num_timesteps, x0.shape[0]
        dims = x0[0].numel()
        gen_device = generator.device if generator is not None else x0.device
        if mc_timesteps is None:
            timesteps, weights = torch.arange(T).expand(batch, T), torch.ones(batch, T - 1, dtype=torch.float64)
        else:
            chosen, weights = self.mc_timestep_draws(batch, mc_timesteps, generator, gen_device)
            timesteps = torch.cat([torch.zeros(batch, 1, dtype=torch.long), chosen], dim=1)

        def model64(x, t, c=None):  # the network runs in the data's dtype; the bound's algebra in float64
            return model(x.to(x0.dtype), t, c)

        x0_64 = x0.double()
        terms = []
        for columns in timesteps.split(batch_t, dim=1):
            k = columns.shape[1]
            t = columns.T.reshape(-1).to(x0.device)  # blocks of B examples: the order of x0.repeat(k, ...)
            x0_rep = x0_64.repeat(k, *([1] * (x0.dim() - 1)))
            noise = torch.randn(x0_rep.shape, generator=generator, device=gen_device, dtype=torch.float64)
            x_t = self.q_sample(x0_rep, t, noise.to(x0.device))
            step = self.p_mean_variance(model64, x_t, t, repeat_condition(cond, k))
            model_logvar = step.variance.log()
            true_mean, _ = self.q_posterior(x0_rep, x_t, t)
            true_logvar = self._gather(self.posterior_log_variance_clipped, t, x_t)
            kl = normal_kl(true_mean, true_logvar, step.mean, model_logvar).flatten(1).sum(1)
            decoder = gaussian_nll(x0_rep, step.mean, model_logvar).flatten(1).sum(1)
            terms.append(torch.where(t == 0, decoder, kl).view(k, batch).T)
        terms = torch.cat(terms, dim=1)  # (B, n)

        prior = self.prior_term(x0_64)
        decoder, diffusion = terms[:, 0], (terms[:, 1:] * weights.to(terms.device)).sum(1)
        total = prior + diffusion + decoder
        out = {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total,
               "bpd": total / (dims * math.log(2))}
        if return_terms:
            out.update(terms=terms, t=timesteps,
                       weights=torch.cat([torch.ones(batch, 1, dtype=torch.float64), weights], dim=1))
        return out
