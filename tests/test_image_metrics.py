"""Image metrics against closed forms, sums written out by hand, and independent references."""

import math

import numpy as np
import pytest
import torch

from latentdiff.metrics.image import count_components, gaussian_window, lpips_distance, mse, psnr, ssim


def test_mse_and_psnr_closed_forms():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.full((2, 1, 4, 4), 0.1)
    b[1] = 0.2
    torch.testing.assert_close(mse(a, b, reduction="none"), torch.tensor([0.01, 0.04], dtype=torch.float64))
    assert float(mse(a, b)) == pytest.approx(0.025)
    per_image = [10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)]  # R = 2 for [-1, 1]
    assert psnr(a, b, reduction="none").tolist() == pytest.approx(per_image)
    assert float(psnr(a, b)) == pytest.approx(sum(per_image) / 2)
    assert float(psnr(a[:1], b[:1], data_range=1.0)) == pytest.approx(20.0)  # 10·log10(1 / 0.01)


def test_ssim_of_identical_images_is_one():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim(x, x, reduction="none"), torch.ones(3, dtype=torch.float64))


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # Flat images: σ = 0, so SSIM = (2 μa μb + C1) / (μa² + μb² + C1) · C2 / C2, with C1 = (0.01 · 2)².
    a, b = torch.zeros(1, 1, 12, 12), torch.full((1, 1, 12, 12), 0.5)
    assert float(ssim(a, b)) == pytest.approx(0.0004 / (0.25 + 0.0004), rel=1e-9)


def test_ssim_on_one_window_matches_the_formula_summed_by_hand():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (11, 11)), rng.uniform(-1, 1, (11, 11))
    b = 0.6 * a + 0.4 * b  # correlated, so every term of the formula matters
    i = np.arange(11) - 5.0
    g = np.exp(-(i**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    var_a, var_b = (w * a * a).sum() - mu_a**2, (w * b * b).sum() - mu_b**2
    cov = (w * a * b).sum() - mu_a * mu_b
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    expected = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    got = ssim(torch.from_numpy(a).view(1, 1, 11, 11), torch.from_numpy(b).view(1, 1, 11, 11))
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert float(w.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(w, w.flip(0))
    assert float(w[5] / w[6]) == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_ssim_matches_scipy_gaussian_filter_reference():
    # skimage's algorithm (gaussian_filter with truncate 3.5 → an 11-tap window at σ = 1.5, then the
    # border of half a window cropped), written with scipy: an independent implementation of the filtering.
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (2, 3, 24, 20))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    expected = []
    for n in range(2):
        values = []
        for c in range(3):
            def f(x):
                return ndimage.gaussian_filter(x, sigma=1.5, truncate=3.5)[5:-5, 5:-5]
            x, y = a[n, c], b[n, c]
            mx, my = f(x), f(y)
            vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
            s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            values.append(s.mean())
        expected.append(np.mean(values))
    got = ssim(torch.from_numpy(a), torch.from_numpy(b), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


def test_ssim_matches_skimage_where_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (3, 32, 32))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), -1, 1)
    expected = metrics.structural_similarity(a, b, data_range=2.0, channel_axis=0, gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False)
    got = ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_ssim_falls_as_noise_grows():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    noise = torch.randn_like(x)
    values = [float(ssim(x, x + s * noise)) for s in (0.05, 0.2, 0.8)]
    assert values[0] > values[1] > values[2]


@pytest.mark.parametrize("call,words", [
    (lambda: ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)), "smaller than the 11×11 window"),
    (lambda: psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 4)), "psnr: expected two"),
    (lambda: mse(torch.zeros(8, 8), torch.zeros(8, 8)), "(B, C, H, W)"),
    (lambda: mse(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), reduction="sum"), "reduction='sum'"),
])
def test_bad_metric_inputs_are_one_line_value_errors(call, words):
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value) and "\n" not in str(info.value)


def test_lpips_metric_with_random_backbone():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    same = lpips_distance(x, x, net="squeeze", pretrained=False, reduction="none")
    torch.testing.assert_close(same, torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    near = lpips_distance(x, x + 0.05 * torch.randn_like(x), net="squeeze", pretrained=False)
    far = lpips_distance(x, -x, net="squeeze", pretrained=False)
    assert 0 < float(near) < float(far)
    chunked = lpips_distance(x, -x, net="squeeze", pretrained=False, batch_size=2)
    torch.testing.assert_close(chunked, far)


def test_lpips_metric_without_backbone_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(FileNotFoundError) as info:
        lpips_distance(x, x, net="alex")
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message and "leave LPIPS out" in message and "\n" not in message


def test_count_components_against_hand_drawn_masks_and_the_shapes_data():
    masks = torch.zeros(5, 12, 12, dtype=torch.bool)
    masks[1, 2:5, 2:5] = True                      # one square
    masks[2, 2:5, 2:5] = masks[2, 7:10, 7:10] = True  # two squares apart
    masks[3, 2:5, 2:5] = masks[3, 5:8, 5:8] = True    # touching at a corner: one under 8-connectivity
    masks[4, 0, :] = masks[4, :, 11] = masks[4, 11, :] = True  # a U along the border: one, with a long path
    masks[4, 6, 6] = True                           # and a one-pixel speck
    assert count_components(masks).tolist() == [0, 1, 2, 1, 2]
    assert count_components(masks, min_pixels=2).tolist() == [0, 1, 2, 1, 1]
    # a snake whose two ends meet only after the labels travel its whole length
    snake = torch.zeros(1, 9, 9, dtype=torch.bool)
    snake[0, ::2, :] = True
    snake[0, 1::4, -1] = snake[0, 3::4, 0] = True
    assert count_components(snake).tolist() == [1]
    from latentdiff.data.shapes import ShapesDataset

    images = torch.stack([ShapesDataset("test", size=200)[i][0] for i in range(200)])
    assert (count_components(images.amax(1) > 0) == 1).all()  # every data image is one shape
