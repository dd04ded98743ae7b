"""Classifier-free guidance (one batched pass) and classifier guidance, alone and through the samplers."""

import pytest
import torch

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.guidance import (
    apply_classifier_guidance,
    classifier_free_guidance,
    classifier_grad_log_prob,
    concat_conditions,
)


class CountingModel:
    """ε(x, t, cond) = x · Σcond + t/1000, recording the batch size of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond=None):
        self.batches.append(x.shape[0])
        if isinstance(cond, dict):
            cond = cond["a"] + 2 * cond["b"]
        scale = cond.sum(1) if cond is not None else torch.zeros(x.shape[0])
        return x * scale.view(-1, *([1] * (x.dim() - 1))) + t.view(-1, *([1] * (x.dim() - 1))) / 1000


def test_cfg_weight_one_is_conditional_zero_unconditional_in_one_batched_pass():
    torch.manual_seed(0)
    x, t = torch.randn(5, 3), torch.randint(0, 1000, (5,))
    cond, uncond = torch.randn(5, 2), torch.zeros(5, 2)
    model = CountingModel()
    c, u = model(x, t, cond), model(x, t, uncond)
    model.batches.clear()
    assert torch.equal(classifier_free_guidance(model, x, t, cond, uncond, 1.0), c)
    assert torch.allclose(classifier_free_guidance(model, x, t, cond, uncond, 0.0), u)
    assert torch.allclose(classifier_free_guidance(model, x, t, cond, uncond, 3.0), u + 3 * (c - u))
    assert model.batches == [5, 10, 10]  # w = 1 needs only the conditional pass; otherwise one pass of 2B


def test_cfg_stacks_dict_conditions_and_rejects_mismatched_ones():
    x, t = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    cond = {"a": torch.ones(4, 1), "b": torch.ones(4, 1)}
    uncond = {"a": torch.zeros(4, 1), "b": torch.zeros(4, 1)}
    model = CountingModel()
    out = classifier_free_guidance(model, x, t, cond, uncond, 2.0)
    assert torch.allclose(out, 2 * model(x, t, cond) - model(x, t, uncond))
    with pytest.raises(ValueError, match="keys"):
        concat_conditions(cond, {"a": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match="uncond"):
        classifier_free_guidance(model, x, t, cond["a"], None, 2.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_with_weight_zero_is_sampling_the_unconditional_model(sampler):
    diff = GaussianDiffusion(num_timesteps=50)
    model = CountingModel()
    noise = torch.randn(6, 2)
    cond, uncond = torch.full((6, 2), 0.1), torch.full((6, 2), -0.2)
    guided = diff.sample(model, (6, 2), sampler=sampler, cond=cond, uncond=uncond, guidance_scale=0.0,
                         noise=noise, generator=torch.Generator().manual_seed(0))
    plain = diff.sample(model, (6, 2), sampler=sampler, cond=uncond, noise=noise,
                        generator=torch.Generator().manual_seed(0))
    assert torch.allclose(guided, plain, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_shifts_eps_by_the_scaled_gradient(sampler):
    diff = GaussianDiffusion(num_timesteps=50)
    target = torch.tensor([1.0, -2.0])

    def grad_log_prob(x_t, t):  # log p(y | x_t) = −‖x_t − target‖²/2
        return target - x_t

    def eps_model(x, t, cond=None):
        return 0.5 * x

    def shifted_model(x, t, cond=None):  # Dhariwal & Nichol's ε̂ − √(1−ᾱ_t) s ∇ log p, written out
        root = (1 - diff.alphas_cumprod[t]).sqrt().float().view(-1, 1)
        return eps_model(x, t) - root * 3.0 * grad_log_prob(x, t)

    noise = torch.randn(200, 2)
    guided = diff.sample(eps_model, noise.shape, sampler=sampler, noise=noise,
                         classifier_guidance=(grad_log_prob, 3.0),
                         generator=torch.Generator().manual_seed(0))
    by_hand = diff.sample(shifted_model, noise.shape, sampler=sampler, noise=noise,
                          generator=torch.Generator().manual_seed(0))
    assert torch.allclose(guided, by_hand, atol=1e-5)
    unguided = diff.sample(eps_model, noise.shape, sampler=sampler, noise=noise,
                           generator=torch.Generator().manual_seed(0))
    # Guidance pulls the samples towards the class: closer to target than without it.
    assert (guided.mean(0) - target).norm() < 0.75 * (unguided.mean(0) - target).norm()


def test_classifier_gradient_matches_the_softmax_closed_form():
    torch.manual_seed(0)
    weight = torch.randn(3, 4, dtype=torch.float64)  # logits = x W for a linear classifier

    def classifier(x, t):
        return x @ weight

    x = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():  # the helper must enable gradients itself: samplers run under no_grad
        grad = classifier_grad_log_prob(classifier, labels)(x, torch.zeros(6, dtype=torch.long))
    probs = torch.softmax(x @ weight, dim=1)
    expected = weight.T[labels] - probs @ weight.T  # ∇ log softmax_y = W_y − Σ_c p_c W_c
    assert torch.allclose(grad, expected, atol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        apply_classifier_guidance(torch.zeros(6, 3), x, labels, torch.ones(6, 1), lambda a, b: a[:, :1], 1.0)
