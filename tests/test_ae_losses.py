"""Stage-one objective: each term's value, where its gradient goes, LPIPS loading, GAN weighting."""

import math

import pytest
import torch
from torch import nn

from autoencoders import (
    AutoencoderLoss,
    AutoencoderObjective,
    PatchDiscriminator,
    adaptive_gan_weight,
    build_autoencoder,
)
from autoencoders.discriminator import hinge_discriminator_loss, hinge_generator_loss
from autoencoders.losses import jacobian_frobenius_sq

TINY = dict(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
            latent_channels=2)


def tiny(kind="rae", **arch):
    torch.manual_seed(0)
    return build_autoencoder(kind, **{**TINY, **arch})


def grads_of(loss, params):
    """Gradient of ``loss`` w.r.t. each of ``params``; zeros where ``loss`` does not depend on it."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def total_norm(grads):
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_reconstruction_is_the_weighted_per_pixel_distance(reconstruction):
    model = tiny("ae")
    loss = AutoencoderLoss("ae", reconstruction=reconstruction, reconstruction_weight=3.0)
    x, recon = torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.5)
    recon[0] = -0.25
    nll, reg, logs = loss(model, x, recon, model.encode(x), step=0)
    per_pixel = (0.5 + 0.25) / 2 if reconstruction == "l1" else (0.25 + 0.0625) / 2
    assert float(logs["rec"]) == pytest.approx(per_pixel)
    assert float(nll) == pytest.approx(3.0 * per_pixel)
    assert float(reg) == 0.0  # a plain AE has no regulariser


def test_kl_term_is_beta_times_kl_per_pixel_with_linear_warmup():
    model = tiny("vae")
    loss = AutoencoderLoss("vae", kl_weight=0.5, kl_warmup_steps=100)
    assert [loss.kl_weight_at(s) for s in (0, 25, 100, 1000)] == [0.0, 0.125, 0.5, 0.5]
    x = torch.randn(3, 1, 8, 8)
    recon, posterior = model(x)
    _, reg, logs = loss(model, x, recon, posterior, step=50)
    expected_kl = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).flatten(1).sum(1).mean()
    torch.testing.assert_close(logs["kl"], expected_kl.detach())
    torch.testing.assert_close(reg, 0.25 * expected_kl / 64)  # β_50 = 0.25, D = 1·8·8
    assert AutoencoderLoss("vae", kl_weight=0.5).kl_weight_at(0) == 0.5  # no warm-up: β from the start


def rae_terms(decoder_regulariser, **kw):
    """The regularisation term of an RAE batch, and the model's encoder / decoder parameters."""
    model = tiny("rae", **kw)
    loss = AutoencoderLoss("rae", latent_l2_weight=1.0, decoder_regulariser=decoder_regulariser,
                           decoder_reg_weight=1.0)
    x = torch.randn(4, 1, 8, 8)
    recon, posterior = model(x)
    _, reg, logs = loss(model, x, recon, posterior, step=0)
    return model, reg, logs, posterior


def test_rae_latent_penalty_is_half_squared_norm_and_moves_only_the_encoder():
    model, reg, logs, posterior = rae_terms("none")
    z = posterior.mode()
    torch.testing.assert_close(reg, 0.5 * z.pow(2).flatten(1).sum(1).mean() / 64)
    enc, dec = list(model.encoder.parameters()), list(model.decoder.parameters())
    assert total_norm(grads_of(reg, enc)) > 0
    assert total_norm(grads_of(reg, dec)) == 0


def test_rae_weight_decay_gradient_is_two_w_on_decoder_weights_only():
    model, reg, logs, posterior = rae_terms("weight_decay")
    latent_part = 0.5 * posterior.mode().pow(2).flatten(1).sum(1).mean() / 64
    decay = reg - latent_part
    dec = [p for p in model.decoder.parameters()]
    for p, g in zip(dec, grads_of(decay, dec)):
        torch.testing.assert_close(g, 2 * p.detach() if p.dim() > 1 else torch.zeros_like(p))  # d/dW ΣW² = 2W
    assert total_norm(grads_of(decay, list(model.encoder.parameters()))) == 0


def test_rae_gradient_penalty_moves_the_decoder_not_the_encoder():
    model, reg, logs, posterior = rae_terms("grad_penalty")
    latent_part = 0.5 * posterior.mode().pow(2).flatten(1).sum(1).mean() / 64
    gp = reg - latent_part
    assert float(logs["grad_penalty"]) > 0
    assert total_norm(grads_of(gp, list(model.decoder.parameters()))) > 0
    assert total_norm(grads_of(gp, list(model.encoder.parameters()))) == 0


def test_jacobian_penalty_estimates_the_squared_frobenius_norm():
    torch.manual_seed(0)
    A = torch.randn(6, 3)  # a linear decoder x = A z has Jacobian A everywhere

    def decode(z):
        return z @ A.T

    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 3)
    estimates = jacobian_frobenius_sq(decode, z, generator=g)
    exact = A.pow(2).sum()
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(float(estimates.mean() - exact)) < 4 * float(stderr), (estimates.mean(), exact)


def test_spectral_norm_regulariser_needs_and_gets_unit_spectral_norm_decoder():
    with pytest.raises(ValueError, match="model.spectral_norm: true") as info:
        AutoencoderObjective(tiny("rae"), decoder_regulariser="spectral_norm")
    assert "\n" not in str(info.value)
    model = tiny("rae", spectral_norm=True)
    AutoencoderObjective(model, decoder_regulariser="spectral_norm")
    z = torch.randn(2, *model.latent_shape)
    for _ in range(100):  # each training-mode pass is one power iteration
        model.decode(z)
    layers = [m for m in model.decoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) >= 5
    originals = []
    for layer in layers:  # σ_max of the (out, in·k·k) matrix (Miyato et al. 2018)
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert float(sigma) == pytest.approx(1.0, abs=0.02)
        original = layer.parametrizations.weight.original.detach()
        originals.append(float(torch.linalg.matrix_norm(original.flatten(1), ord=2)))
    assert max(abs(s - 1) for s in originals) > 0.1  # the unit norm comes from the parametrisation
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in model.encoder.modules())


def test_lpips_with_random_backbone_gives_finite_loss_and_gradient():
    model = tiny("ae", in_channels=3, image_size=32)
    objective = AutoencoderObjective(model, perceptual_weight=1.0, perceptual_net="squeeze",
                                     perceptual_pretrained=False)
    objective.train()  # LPIPS must stay in eval mode (its dropout off) inside a training objective
    assert not objective.loss.perceptual.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    losses, logs = objective.losses(x, 0)
    assert math.isfinite(float(logs["perceptual"])) and float(logs["perceptual"]) > 0
    torch.testing.assert_close(logs["total"], logs["rec"] + logs["perceptual"])
    distance = objective.loss.perceptual(model(x)[0], x).mean()
    assert total_norm(grads_of(distance, list(model.decoder.parameters()))) > 0
    losses["model"].backward()
    assert all(p.grad is None for p in objective.loss.perceptual.parameters())
    same = objective.loss.perceptual(x, x)
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-6, rtol=0)
    one_channel = objective.loss.perceptual(x[:, :1], x[:, :1].flip(-1))
    assert one_channel.shape == (2,) and torch.all(one_channel > 0)


def test_missing_lpips_backbone_is_a_one_line_error_saying_how_to_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty torch cache
    with pytest.raises(FileNotFoundError) as info:
        AutoencoderObjective(tiny("ae"), perceptual_weight=0.1, perceptual_net="vgg")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in message
    assert "perceptual_weight: 0" in message
    AutoencoderObjective(tiny("ae"), perceptual_weight=0.0)  # weight 0: nothing is loaded, no error


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 2.0]]))
    nll = (3.0 * w).sum()  # ∇ = 3 everywhere, ‖∇‖ = 3·2 = 6
    gan = w.pow(2).sum()  # ∇ = 2w, ‖∇‖ = 2‖w‖ = 2·√9.25
    expected = 6.0 / (2 * math.sqrt(9.25) + 1e-4)
    assert float(adaptive_gan_weight(nll, gan, w)) == pytest.approx(expected, rel=1e-6)
    assert float(adaptive_gan_weight(nll, 1e-9 * gan, w)) == pytest.approx(1e4)  # clamped
    assert w.grad is None  # nothing accumulated into .grad


def test_gan_term_is_weighted_by_the_adaptive_weight_of_the_model():
    model = tiny("ae", in_channels=3, image_size=32)
    objective = AutoencoderObjective(model, disc_weight=0.5, disc_start=0, disc_channels=8)
    torch.manual_seed(1)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    losses, logs = objective.losses(x, 0)
    # Recompute both terms independently; the AE is deterministic, BatchNorm uses batch statistics.
    recon = model(x)[0]
    nll = (recon - x).pow(2).mean()
    gan = -objective.discriminator(recon).mean()
    w = model.last_layer
    (g_nll,), (g_gan,) = torch.autograd.grad(nll, w, retain_graph=True), torch.autograd.grad(gan, w)
    expected = 0.5 * g_nll.norm() / (g_gan.norm() + 1e-4)
    torch.testing.assert_close(logs["gan_weight"], expected)
    torch.testing.assert_close(logs["gan"], gan.detach())
    torch.testing.assert_close(losses["model"], nll + expected * gan)


def test_disc_and_autoencoder_gradients_are_separated():
    model = tiny("vae", in_channels=3, image_size=32)
    objective = AutoencoderObjective(model, disc_weight=1.0, disc_start=0, disc_channels=8, kl_weight=1e-3)
    disc = objective.discriminator
    ae_params, disc_params = list(model.parameters()), list(disc.parameters())
    torch.manual_seed(2)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    losses, logs = objective.losses(x, 0)
    assert all(p.requires_grad for p in disc_params)  # switched back on after the generator term
    assert total_norm(grads_of(losses["model"], disc_params)) == 0
    assert total_norm(grads_of(losses["disc"], ae_params)) == 0
    ae_expected = grads_of(losses["model"], ae_params)
    disc_expected = grads_of(losses["disc"], disc_params)
    assert total_norm(ae_expected) > 0 and total_norm(disc_expected) > 0
    (losses["model"] + losses["disc"]).backward()
    for p, g in zip(ae_params + disc_params, ae_expected + disc_expected):
        torch.testing.assert_close(p.grad, g)


def test_discriminator_waits_for_disc_start():
    model = tiny("ae", in_channels=3, image_size=32)
    objective = AutoencoderObjective(model, disc_weight=1.0, disc_start=10, disc_channels=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    losses, logs = objective.losses(x, 9)
    assert losses["disc"] is None and "gan" not in logs
    torch.testing.assert_close(losses["model"], logs["rec"])
    losses, logs = objective.losses(x, 10)
    assert losses["disc"] is not None and "gan" in logs
    assert AutoencoderObjective(model).discriminator is None  # disc_weight 0: no discriminator at all


def test_hinge_losses_match_hand_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # ½(mean(relu(1 − real)) + mean(relu(1 + fake))) = ½((0 + 0.5)/2 + (0 + 1.5)/2)
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.5)
    assert float(hinge_generator_loss(fake)) == pytest.approx(0.75)


def test_patch_discriminator_scores_patches():
    disc = PatchDiscriminator(in_channels=3, channels=8, num_layers=3)
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert PatchDiscriminator(1, 8, 2)(torch.randn(2, 1, 32, 32)).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("kwargs,words", [
    (dict(reconstruction="l3"), "reconstruction='l3'"),
    (dict(decoder_regulariser="dropout"), "decoder_regulariser='dropout'"),
    (dict(kl_weight=-1.0), "kl_weight=-1.0"),
    (dict(perceptual_weight=1.0, perceptual_net="resnet"), "perceptual_net='resnet'"),
    (dict(disc_weight=-0.1), "disc_weight=-0.1"),
])
def test_bad_loss_values_are_one_line_value_errors(kwargs, words):
    with pytest.raises(ValueError) as info:
        AutoencoderObjective(tiny("rae"), **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_rae_regulariser_on_a_vae_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="RAE regulariser") as info:
        AutoencoderObjective(tiny("vae"), decoder_regulariser="grad_penalty")
    assert "\n" not in str(info.value)
