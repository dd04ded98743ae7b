"""Guidance: classifier-free (Ho & Salimans 2022), autoguidance (Karras et al. 2024) and classifier
(Dhariwal & Nichol 2021).

A condition ``cond`` is whatever the denoiser takes as its third argument: None, a tensor with the
batch along dim 0, or a dict of such tensors. The helpers here stack conditions along the batch so
that the conditional and unconditional predictions come from ONE forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def concat_conditions(*conds):
    """Concatenate conditions (tensors, or dicts of tensors with the same keys) along the batch."""
    first = conds[0]
    if first is None:
        if any(c is not None for c in conds):
            raise ValueError("cannot stack a None condition with a given one; pass both cond and uncond")
        return None
    if isinstance(first, dict):
        if any(not isinstance(c, dict) or c.keys() != first.keys() for c in conds):
            raise ValueError(f"dict conditions must all have the keys {sorted(first)}; uncond mirrors cond")
        return {k: concat_conditions(*(c[k] for c in conds)) for k in first}
    if not all(isinstance(c, torch.Tensor) for c in conds):
        raise ValueError("conditions must be tensors or dicts of tensors; uncond must have the type of cond")
    return torch.cat(conds)


def repeat_condition(cond, times: int):
    """``cond`` stacked ``times`` times along the batch (block order, matching ``x.repeat(times, ...)``)."""
    return concat_conditions(*([cond] * times))


def classifier_free_guidance(model, x_t: torch.Tensor, t: torch.Tensor, cond, uncond,
                             guidance_scale: float) -> torch.Tensor:
    """ε̂ = ε_u + w (ε_c − ε_u) (Ho & Salimans 2022, Eq. 6 written with w = 1 + their w).

    w = 1 is the conditional model, w = 0 the unconditional one, w > 1 extrapolates away from the
    unconditional prediction. Both predictions come from one forward pass over the batch doubled.
    The combination is affine with weights summing to one, so it commutes with the (affine) maps
    between ε, x0 and v predictions: ``model`` may output any of them. :func:`guided_output` without a guide.

    Args:
        model: ``model(x_t, t, cond)`` → tensor shaped like x_t.
        x_t: (B, ...) noisy inputs; t: (B,) int64 timestep indices.
        cond, uncond: conditional and unconditional conditions (same structure).
        guidance_scale: w.
    """
    return guided_output(model, x_t, t, cond, uncond, guidance_scale)


def guided_output(model, x_t: torch.Tensor, t: torch.Tensor, cond, uncond, guidance_scale: float,
                  guide=None, autoguidance_scale: float = 1.0) -> torch.Tensor:
    """Classifier-free guidance and autoguidance in one affine combination of network outputs:

        D = D_c + (w − 1)(D_c − D_u) + (w_a − 1)(D_c − G_c)

    D_c, D_u: the model with ``cond`` and ``uncond``; G_c: the guide, a weaker version of the same model (fewer
    steps, smaller, its own EMA), with ``cond``. Without autoguidance (w_a = 1) it is classifier-free guidance
    D_u + w (D_c − D_u) (Ho & Salimans 2022, Eq. 6 with w = 1 + their w); without CFG (w = 1) it is autoguidance
    G_c + w_a (D_c − G_c) (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", Eq. 2):
    extrapolating away from the guide's errors, which lie where the model is still uncertain, sharpens the
    samples without pulling them towards a class's few easiest modes as CFG does. Both together add the two
    guidance directions. The weights sum to one, so the combination commutes with the affine maps between ε,
    x0 and v outputs (model and guide must make the same kind of prediction). w = 1 and w_a = 1 call the model
    once and return D_c itself; w_a = 1 never calls the guide.

    Args:
        model, guide: ``f(x_t, t, cond)`` → tensor shaped like x_t; guide may be None (no autoguidance).
        x_t: (B, ...) noisy inputs; t: (B,) int64 timestep indices.
        cond, uncond: conditional and unconditional conditions (same structure; uncond only for w != 1).
        guidance_scale: w, classifier-free. autoguidance_scale: w_a.
    """
    if guidance_scale == 1.0:
        out = out_cond = model(x_t, t, cond)
    else:
        if cond is None or uncond is None:
            raise ValueError("guidance_scale != 1 needs both cond and uncond (the unconditional condition)")
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), concat_conditions(cond, uncond))
        out_cond, out_uncond = both.chunk(2)
        out = out_uncond + guidance_scale * (out_cond - out_uncond)
    if autoguidance_scale == 1.0:
        return out
    if guide is None:
        raise ValueError("autoguidance_scale != 1 needs a guide model")
    return out + (autoguidance_scale - 1.0) * (out_cond - guide(x_t, t, cond))


def apply_classifier_guidance(eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                              sqrt_one_minus_alphas_cumprod: torch.Tensor,
                              grad_log_prob: Callable, scale: float) -> torch.Tensor:
    """ε̂' = ε̂ − √(1 − ᾱ_t) · s · ∇_{x_t} log p(y | x_t) (Dhariwal & Nichol 2021, §4.2, Algorithm 2).

    ε = −√(1 − ᾱ_t) ∇ log p_t(x_t), so this adds s ∇ log p(y | x_t) to the score: samples follow
    p_t(x_t) p(y | x_t)^s. The same ε̂' drives both DDPM and DDIM steps.

    Args:
        eps: (B, ...) predicted noise; x_t: (B, ...); t: (B,) timestep indices.
        sqrt_one_minus_alphas_cumprod: √(1 − ᾱ_t) broadcastable to eps, e.g. (B, 1, ..., 1).
        grad_log_prob: ``grad_log_prob(x_t, t)`` → tensor like x_t (see :func:`classifier_grad_log_prob`).
        scale: s, the guidance strength.
    """
    grad = grad_log_prob(x_t, t)
    if grad.shape != x_t.shape:
        raise ValueError(f"classifier guidance gradient has shape {tuple(grad.shape)}, "
                         f"expected {tuple(x_t.shape)} (that of x_t)")
    return eps - sqrt_one_minus_alphas_cumprod * scale * grad.to(eps.dtype)


def classifier_grad_log_prob(classifier: Callable, labels: torch.Tensor) -> Callable:
    """``grad_log_prob(x_t, t)`` = ∇_{x_t} Σ_a log softmax(head_a(x_t, t))[labels_a], summed over the batch.

    With several heads (one per attribute) the attributes are treated as independent given x_t, so
    log p(a_1, ..., a_A | x_t) = Σ_a log p(a_i | x_t); attributes whose label is ``UNSPECIFIED`` (−1)
    are left out of the sum, i.e. not guided.

    Args:
        classifier: noise-aware classifier ``classifier(x_t, t)`` → (B, num_classes) logits, or a list
            of such tensors, one per attribute.
        labels: (B,) int64 target classes for one head, or (B, A) for A heads (−1: not guided).
    """
    from latentdiff.conditioning import UNSPECIFIED

    def grad_log_prob(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            out = classifier(x, t)
            heads = [out] if isinstance(out, torch.Tensor) else list(out)
            columns = labels.view(-1, 1) if labels.dim() == 1 else labels
            if columns.shape[1] != len(heads):
                raise ValueError(f"classifier guidance: {columns.shape[1]} label columns for a classifier "
                                 f"with {len(heads)} heads; give one label (or -1) per head")
            chosen = x.new_zeros(())
            for logits, y in zip(heads, columns.to(x.device).unbind(1)):
                keep = y != UNSPECIFIED
                log_probs = torch.log_softmax(logits[keep], dim=-1)
                chosen = chosen + log_probs.gather(1, y[keep].view(-1, 1)).sum()
            if not chosen.requires_grad:  # nothing asked for: no guidance
                return torch.zeros_like(x_t)
            return torch.autograd.grad(chosen, x)[0]

    return grad_log_prob
