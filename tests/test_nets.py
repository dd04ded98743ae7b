"""Denoisers: embeddings, UNet and MLP shapes, conditioning and zero-initialised outputs; a swiss-roll fit."""

import math

import pytest
import torch

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.nets import MLPDenoiser, UNet, timestep_embedding
from latentdiff.nets.unet import SelfAttention


def randomise_zero_layers(net):
    """Zero-initialised layers (output, residual branches) hide the rest; give them weights to see it."""
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.1)
    return net


def test_sinusoidal_embedding_matches_vaswani_frequencies():
    t = torch.tensor([0, 1, 7, 999])
    emb = timestep_embedding(t, 8)
    freqs = [10000 ** (-k / 4) for k in range(4)]
    expected = torch.tensor([[math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
                             for ti in t.tolist()])
    assert emb.shape == (4, 8) and torch.allclose(emb, expected, atol=1e-5)
    assert timestep_embedding(t, 7).shape == (4, 7)


@pytest.mark.parametrize("shape,mults,attention",
                         [((4, 8, 8), (1, 2), (4,)), ((4, 16, 16), (1, 2, 2), (8, 4))])
def test_unet_keeps_the_shape_and_starts_at_zero(shape, mults, attention):
    torch.manual_seed(0)
    net = UNet(shape[0], channels=16, channel_mults=mults, num_res_blocks=1, attention_resolutions=attention,
               num_heads=2, image_size=shape[-1])
    x, t = torch.randn(3, *shape), torch.tensor([0, 10, 999])
    out = net(x, t)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    # attention after every block at the named resolutions (down: 1 each, up: 2 each) plus the middle one
    assert sum(isinstance(m, SelfAttention) for m in net.modules()) == 3 * len(attention) + 1
    assert UNet(4, out_channels=8, channels=16, num_res_blocks=1)(x, t).shape == (3, 8, *shape[1:])


def test_unet_output_depends_on_time_and_condition():
    torch.manual_seed(0)
    net = randomise_zero_layers(UNet(4, channels=16, num_res_blocks=1, cond_dim=6, attention_resolutions=(4,),
                                      image_size=8))
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([5, 5])
    cond = torch.randn(2, 6)
    base = net(x, t, cond)
    assert not torch.allclose(base, net(x, t, cond + 1.0))
    assert not torch.allclose(base, net(x, torch.tensor([500, 500]), cond))
    assert not torch.allclose(base, net(x, t))  # None: no condition added


def _nets_with_condition():
    torch.manual_seed(0)
    unet = randomise_zero_layers(UNet(4, channels=16, num_res_blocks=1, cond_dim=6, attention_resolutions=(4,),
                                      image_size=8))
    mlp = randomise_zero_layers(MLPDenoiser(5, hidden=32, num_blocks=2, cond_dim=6))
    return [(unet, torch.randn(3, 4, 8, 8)), (mlp, torch.randn(3, 5))]


@pytest.mark.parametrize("which", [0, 1], ids=["unet", "mlp"])
def test_condition_is_added_to_the_time_embedding_exactly(which):
    # ε(x, t, c) must equal the unconditional network whose time embedding is shifted by proj(c): the condition
    # enters once, with its sign and scale, through the same vector as t (a dropped, doubled, negated or
    # misrouted condition changes the output).
    net, x = _nets_with_condition()[which]
    t, cond = torch.tensor([3, 70, 900]), torch.randn(3, 6)
    with torch.no_grad():
        shift = net.cond_proj(cond)
        conditional = net(x, t, cond)
        plain_embed = net.time_embed.forward
        net.time_embed.forward = lambda tt: plain_embed(tt) + shift
        shifted = net(x, t)
        net.time_embed.forward = plain_embed
    assert torch.equal(conditional, shifted)
    assert not torch.allclose(conditional, net(x, t))  # and the shift is not zero: the test can see it


@pytest.mark.parametrize("which", [0, 1], ids=["unet", "mlp"])
def test_each_example_sees_only_its_own_time_and_condition(which):
    net, x = _nets_with_condition()[which]
    t, cond = torch.tensor([3, 70, 900]), torch.randn(3, 6)
    with torch.no_grad():
        batch = net(x, t, cond)
        alone = torch.cat([net(x[i:i + 1], t[i:i + 1], cond[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, alone, atol=1e-5)


def test_unet_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by 2"):
        UNet(4, channels=16, channel_mults=(1, 2))(torch.randn(1, 4, 7, 7), torch.zeros(1))
    with pytest.raises(ValueError, match="image_size"):
        UNet(4, channels=16, attention_resolutions=(4,))
    with pytest.raises(ValueError, match="match no level"):
        UNet(4, channels=16, attention_resolutions=(2,), image_size=8)
    with pytest.raises(ValueError, match="heads"):
        UNet(4, channels=16, num_heads=3)
    with pytest.raises(ValueError, match="cond_dim"):
        UNet(4, channels=16)(torch.randn(1, 4, 8, 8), torch.zeros(1), torch.randn(1, 3))


def test_mlp_keeps_the_shape_starts_at_zero_and_uses_time_and_condition():
    torch.manual_seed(0)
    net = MLPDenoiser(5, hidden=32, num_blocks=2, cond_dim=3)
    x, t, cond = torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), torch.randn(4, 3)
    assert torch.equal(net(x, t, cond), torch.zeros(4, 5))
    randomise_zero_layers(net)
    base = net(x, t, cond)
    assert base.shape == (4, 5)
    assert not torch.allclose(base, net(x, t, cond * 2))
    assert not torch.allclose(base, net(x, t + 100, cond))
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        net(torch.randn(4, 6), t)


def swiss_roll(n, generator):
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    points = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1)
    points = points + 0.3 * torch.randn(n, 2, generator=generator)
    return points / 8  # about unit scale


def sliced_wasserstein(a, b, generator, projections=128):
    """Mean over random directions of the 1-D Wasserstein-1 distance of the projections (equal sizes)."""
    dirs = torch.randn(a.shape[1], projections, generator=generator)
    dirs = dirs / dirs.norm(dim=0)
    return float(((a @ dirs).sort(0).values - (b @ dirs).sort(0).values).abs().mean())


def test_small_mlp_learns_the_swiss_roll():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-D MLP gains nothing from threads on a shared machine
    try:
        data = swiss_roll(4000, torch.Generator().manual_seed(0))
        T = 100
        diff = GaussianDiffusion(num_timesteps=T, beta_start=0.1 / T, beta_end=20 / T)  # ᾱ_T ≈ e^−10
        net = MLPDenoiser(2, hidden=128, num_blocks=2)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=700, pct_start=0.1)
        for _ in range(700):
            loss = diff.training_loss(net, data[torch.randint(0, len(data), (512,))])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        samples = diff.sample(net.eval(), (2000, 2), generator=torch.Generator().manual_seed(1))
    finally:
        torch.set_num_threads(threads)
    reference = swiss_roll(2000, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(2)
    gaussian = data.mean(0) + torch.randn(2000, 2, generator=g) @ torch.linalg.cholesky(torch.cov(data.T)).T
    model_distance = sliced_wasserstein(samples, reference, torch.Generator().manual_seed(3))
    gaussian_distance = sliced_wasserstein(gaussian, reference, torch.Generator().manual_seed(3))
    # The moment-matched Gaussian is what a model that learned only the scale would give.
    assert model_distance < 0.5 * gaussian_distance, (model_distance, gaussian_distance)
