"""Latent cache (encode once, reuse, rebuild on change) and latent normalisation."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from latentdiff.latents import (
    LatentNormaliser,
    NpyRows,
    autoencoder_identity,
    build_latent_cache,
    cache_key,
    fit_normaliser,
    sample_latents,
)


class _Posterior:
    def __init__(self, mean, logvar):
        self.mean, self.logvar = mean, logvar

    def mode(self):
        return self.mean


class CountingEncoder(torch.nn.Module):
    """A fixed linear 'VAE' encoder that counts how many images it has encoded."""

    latent_shape = (2, 2, 2)

    def __init__(self, deterministic=False):
        super().__init__()
        self.is_deterministic = deterministic
        self.calls = 0

    def encode(self, x):
        self.calls += x.shape[0]
        mean = x[:, :2, ::2, ::2] * 3.0
        return _Posterior(mean, torch.full_like(mean, -2.0))


def dataset(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n, 2), generator=g))


def test_cache_stores_posterior_and_is_reused(tmp_path):
    enc, data = CountingEncoder(), dataset()
    cache = build_latent_cache(enc, data, tmp_path / "k", batch_size=16, progress=False)
    assert enc.calls == 40 and cache.stochastic and cache.latent_shape == (2, 2, 2)
    x, a = data[7]
    mean, logvar, attrs = cache[7]
    assert torch.allclose(mean, x[:2, ::2, ::2] * 3.0) and torch.all(logvar == -2.0) and torch.equal(attrs, a)
    again = build_latent_cache(enc, data, tmp_path / "k", batch_size=16, progress=False)
    assert enc.calls == 40, "a second build must hit the cache, not re-encode"
    assert isinstance(again.mean, NpyRows), "latents are read from disk row by row, not loaded into RAM"


def test_deterministic_encoder_stores_z_only(tmp_path):
    cache = build_latent_cache(CountingEncoder(deterministic=True), dataset(), tmp_path / "d", progress=False)
    mean, logvar, _ = cache[0]
    assert not cache.stochastic and logvar.numel() == 0
    assert torch.equal(sample_latents(mean, logvar), mean)


def test_the_raw_weights_of_an_autoencoder_get_a_cache_of_their_own_and_its_ema_keeps_the_old_key():
    """ae.use_ema=false encodes with other weights than the (default) EMA of the same checkpoint: sharing their
    cache would train the second run on the first one's latents. The EMA's key is the checkpoint hash, as before."""
    data = {"name": "shapes", "image_size": 32, "seed": 0}
    ema, raw = {"hash": "aaa", "use_ema": True}, {"hash": "aaa", "use_ema": False}
    assert autoencoder_identity(ema) == "aaa" == autoencoder_identity({"hash": "aaa"})
    assert cache_key(autoencoder_identity(raw), data, "train") != cache_key(autoencoder_identity(ema), data, "train")


def test_cache_key_changes_with_autoencoder_and_data_but_not_with_where_data_lives():
    data = {"name": "shapes", "seed": 0, "root": None, "train_size": 100}
    k = cache_key("aaa", data, "train")
    assert k != cache_key("bbb", data, "train")
    assert k != cache_key("aaa", {**data, "seed": 1}, "train")
    assert k != cache_key("aaa", data, "test")
    assert k == cache_key("aaa", {**data, "root": "/elsewhere", "num_workers": 4}, "train")


def test_sampled_latents_follow_the_posterior():
    mean, logvar = torch.full((200_000,), 1.5), torch.full((200_000,), np.log(0.25))
    z = sample_latents(mean, logvar, generator=torch.Generator().manual_seed(0))
    assert abs(z.mean() - 1.5) < 0.01 and abs(z.std() - 0.5) < 0.01


def test_scale_normaliser_uses_the_law_of_total_variance():
    g = torch.Generator().manual_seed(0)
    mu = 2.0 * torch.randn(5000, 3, 4, 4, generator=g)
    logvar = torch.full_like(mu, np.log(5.0))  # Var[z] = 4 + 5 = 9
    norm = fit_normaliser(mu, logvar, "scale")
    assert abs(float(norm.scale) - 1 / 3) < 0.01
    z = sample_latents(mu, logvar, generator=g)
    assert abs(float(norm.normalise(z).std()) - 1.0) < 0.02


def test_channel_normaliser_standardises_each_channel_and_round_trips():
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    scale = torch.tensor([0.5, 3.0, 1.0]).view(1, 3, 1, 1)
    z = torch.randn(4000, 3, 4, 4, generator=g) * scale + shift
    norm = fit_normaliser(z, None, "channel")
    zn = norm.normalise(z)
    assert torch.allclose(zn.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(zn.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.allclose(norm.denormalise(zn), z, atol=1e-5)
    restored = LatentNormaliser.from_state(norm.state())
    assert torch.equal(restored.normalise(z), zn)
    # log|det| of the map: sum over every element of log(scale)
    expected = float(torch.log(norm.scale.double()).sum()) * 16
    assert abs(norm.log_det_jacobian((3, 4, 4)) - expected) < 1e-9
    assert LatentNormaliser.identity().log_det_jacobian((3, 4, 4)) == 0.0


def test_npy_rows_reads_what_numpy_wrote_and_refuses_a_truncated_file(tmp_path):
    """NpyRows (pread per row) returns exactly the rows np.load sees, for ints, slices and negative indices."""
    array = np.random.default_rng(0).standard_normal((37, 4, 3, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    assert len(rows) == 37 and rows.shape == array.shape
    for i in (0, 5, 36, -1):
        assert np.array_equal(rows[i], array[i])
    assert np.array_equal(rows[3:20], array[3:20]) and np.array_equal(rows[30:100], array[30:])
    with pytest.raises(IndexError):
        rows[37]
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "b.npy").write_bytes(data[: len(data) - 100])
    with pytest.raises(OSError, match="truncated"):
        NpyRows(tmp_path / "b.npy")[36]
