"""Stage-one models: latent shapes, posteriors, determinism, checkpoints, config errors, overfitting."""

import io
import json
import math

import pytest
import torch

from autoencoders import VAE, AutoencoderObjective, DeterministicAE, DiagonalGaussian, build_autoencoder

TINY = dict(base_channels=8, num_res_blocks=1)


@pytest.mark.parametrize("kind", ["vae", "rae"])
@pytest.mark.parametrize("channel_mults,factor", [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_latent_shape_follows_downsampling_factor(kind, channel_mults, factor):
    torch.manual_seed(0)
    model = build_autoencoder(kind, in_channels=3, image_size=16, channel_mults=channel_mults,
                              latent_channels=3, **TINY)
    x = torch.randn(2, 3, 16, 16)
    posterior = model.encode(x)
    assert model.latent_shape == (3, 16 // factor, 16 // factor)
    assert posterior.mode().shape == (2, *model.latent_shape)
    assert posterior.sample().shape == (2, *model.latent_shape)
    assert model.decode(posterior.mode()).shape == x.shape
    recon, _ = model(x)
    assert recon.shape == x.shape


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_vector_head_gives_d_dimensional_latents(kind):
    torch.manual_seed(0)
    model = build_autoencoder(kind, in_channels=1, image_size=16, channel_mults=(1, 2), latent_dim=5, **TINY)
    posterior = model.encode(torch.randn(3, 1, 16, 16))
    assert model.latent_shape == (5,)
    assert posterior.mode().shape == (3, 5)
    assert model.decode(posterior.sample()).shape == (3, 1, 16, 16)
    if kind == "vae":
        assert posterior.logvar.shape == (3, 5)


def test_kl_closed_form_matches_monte_carlo_estimate():
    torch.manual_seed(0)
    mean, logvar = torch.randn(2, 3) * 0.8, torch.randn(2, 3) * 0.5
    q = DiagonalGaussian(mean, logvar)
    n = 40_000
    many = DiagonalGaussian(mean.expand(n, 2, 3), logvar.expand(n, 2, 3))  # n copies of q
    z = many.sample(torch.Generator().manual_seed(1))  # (n, 2, 3)
    normal = torch.distributions.Normal
    log_q = normal(mean, q.std).log_prob(z).sum(-1)
    log_p = normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean(0)  # KL = E_q[log q − log p]
    stderr = (log_q - log_p).std(0) / math.sqrt(n)
    assert q.kl().shape == (2,)
    assert torch.all((q.kl() - mc).abs() < 4 * stderr), (q.kl(), mc, stderr)
    # The samples themselves have the posterior's moments (the reparameterisation is right).
    torch.testing.assert_close(z.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), q.std, atol=0.03, rtol=0)


def test_kl_of_standard_normal_posterior_is_zero():
    q = DiagonalGaussian(torch.zeros(4, 2, 3, 3), torch.zeros(4, 2, 3, 3))
    torch.testing.assert_close(q.kl(), torch.zeros(4))


def test_deterministic_encoder_is_deterministic_and_has_no_kl():
    torch.manual_seed(0)
    model = DeterministicAE(in_channels=1, image_size=16, channel_mults=(1, 2), **TINY).eval()
    x = torch.randn(4, 1, 16, 16)
    p1, p2 = model.encode(x), model.encode(x)
    assert model.is_deterministic and not VAE(in_channels=1, image_size=16, **TINY).is_deterministic
    torch.testing.assert_close(p1.mode(), p2.mode(), rtol=0, atol=0)
    torch.testing.assert_close(p1.sample(torch.Generator().manual_seed(3)), p1.mode(), rtol=0, atol=0)
    torch.testing.assert_close(p1.kl(), torch.zeros(4), rtol=0, atol=0)
    recon_sampled, _ = model(x, sample_posterior=True)
    recon_mode, _ = model(x, sample_posterior=False)
    torch.testing.assert_close(recon_sampled, recon_mode, rtol=0, atol=0)


def test_vae_sample_is_stochastic_and_seeded():
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=16, channel_mults=(1, 2), **TINY).eval()
    p = model.encode(torch.randn(2, 1, 16, 16))
    a, b = p.sample(torch.Generator().manual_seed(5)), p.sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, p.sample(torch.Generator().manual_seed(6)))
    assert not torch.equal(a, p.mode())


@pytest.mark.parametrize("kind,spectral_norm,latent_dim", [("vae", False, None), ("rae", True, None),
                                                           ("ae", False, 6)])
def test_reloaded_checkpoint_reconstructs_identically(kind, spectral_norm, latent_dim):
    torch.manual_seed(0)
    model = build_autoencoder(kind, in_channels=3, image_size=16, channel_mults=(1, 2), attention=True,
                              spectral_norm=spectral_norm, latent_dim=latent_dim, **TINY)
    x = torch.randn(3, 3, 16, 16)
    model.train()
    model(x)  # a training-mode pass updates spectral norm's power-iteration vectors: they must be saved too
    model.eval()
    expected = model.decode(model.encode(x).mode())
    buffer = io.BytesIO()
    torch.save({"config": model.config, "model": model.state_dict()}, buffer)
    json.dumps(model.config)  # plain types only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    torch.manual_seed(1)  # a different initialisation, so only the loaded weights can make them equal
    rebuilt = build_autoencoder(**state["config"]).eval()
    assert not torch.equal(rebuilt.decode(rebuilt.encode(x).mode()), expected)
    rebuilt.load_state_dict(state["model"])
    assert rebuilt.config == model.config and rebuilt.latent_shape == model.latent_shape
    torch.testing.assert_close(rebuilt.decode(rebuilt.encode(x).mode()), expected, rtol=0, atol=0)


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_last_layer_is_the_decoder_output_weight_leaf(spectral_norm):
    model = build_autoencoder("rae", in_channels=3, image_size=16, channel_mults=(1, 2),
                              spectral_norm=spectral_norm, **TINY)
    w = model.last_layer
    assert w.is_leaf and w.requires_grad
    assert any(w is p for p in model.decoder.parameters())
    assert w.shape[0] == 3  # it produces the image channels


@pytest.mark.parametrize("arch,words", [
    (dict(channel_mults=(1, 1, 1, 1, 1)), "f = 2^(levels-1)"),  # f = 16
    (dict(channel_mults=(1, 0)), "positive multipliers"),
    (dict(image_size=30, channel_mults=(1, 2, 2)), "not divisible"),
    (dict(latent_channels=0), "latent_channels=0"),
    (dict(latent_dim=0), "latent_dim=0"),
    (dict(dropout=1.5), "dropout=1.5"),
    (dict(num_res_blocks=-1), "num_res_blocks=-1"),
])
def test_bad_architecture_values_are_one_line_value_errors(arch, words):
    with pytest.raises(ValueError) as info:
        build_autoencoder("vae", **{"in_channels": 3, "image_size": 32, **arch})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_unknown_kind_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="kind='gan'") as info:
        build_autoencoder("gan", in_channels=3, image_size=32)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["vae", "rae"])
def test_overfitting_one_small_batch_lowers_the_loss_tenfold(kind):
    torch.manual_seed(0)
    model = build_autoencoder(kind, in_channels=1, image_size=8, base_channels=16, channel_mults=(1, 2),
                              latent_channels=4, num_res_blocks=1)
    objective = AutoencoderObjective(model, reconstruction="l2")
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(80):
        losses, logs = objective.losses(x, step)
        optimizer.zero_grad()
        losses["model"].backward()
        optimizer.step()
        first = first if first is not None else float(logs["rec"])
    final = float(objective.losses(x, 80)[1]["rec"])
    assert final < first / 10, (first, final)
