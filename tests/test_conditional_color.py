"""A tiny conditional shapes run learns colour: samples asked for a colour show it far above chance.

The colour is read off the pixels, independently of any trained network: the mean RGB of the lit pixels,
matched to the nearest of the dataset's six saturated colours.
"""

import numpy as np
import torch
from test_end_to_end import ROOT, assert_ran_all_its_steps, cli

from latentdiff.data.shapes import COLORS

# 16x16 images (4x4x4 latents) keep it to about a minute and a half. 800 denoiser steps: colour accuracy 0.94
# with the attribute embeddings' N(0, 1/A) start (0.29 with std 0.02, see latentdiff/conditioning.py).
DATA = ["data.image_size=16", "data.train_size=4096", "data.test_size=64"]
AE = [*DATA, "train.steps=300", "eval_samples=32", "train.batch_size=64", "train.eval_every=300",
      "train.image_every=300", "model.base_channels=16"]
LDM = [*DATA, "train.steps=800", "train.lr=2e-3", "train.warmup_steps=50", "bound_examples=16", "train.batch_size=64",
       "train.eval_every=800", "train.image_every=800", "bound_every=800", "sample.num=6", "denoiser.channels=32"]


def colour_of(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → (N,) index into COLORS of the nearest saturated colour to the lit pixels' mean."""
    rgb = (images + 1) / 2
    lit = rgb.max(axis=1, keepdims=True) > 0.5  # the shape; the background is black
    mean = (rgb * lit).sum(axis=(2, 3)) / np.maximum(lit.sum(axis=(2, 3)), 1)  # (N, 3)
    table = np.array(list(COLORS.values()), dtype=np.float64)  # (6, 3)
    return ((mean[:, None, :] - table[None]) ** 2).sum(-1).argmin(1)


def test_colour_reader_is_exact_on_real_shapes():
    from latentdiff.data.shapes import ShapesDataset

    data = ShapesDataset("test", size=60)
    images = torch.stack([data[i][0] for i in range(60)]).numpy()
    colours = np.array([int(data[i][1][0]) for i in range(60)])
    assert (colour_of(images) == colours).all()


def test_tiny_conditional_run_samples_the_asked_colour_far_above_chance(tmp_path):
    out = tmp_path / "runs"
    cli("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={out}", *AE)
    cli("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
        f"ae.run={out / 'shapes_ae_kl'}", *LDM)
    for name in ("shapes_ae_kl", "shapes_ldm_kl"):  # the recipes' 5 and 9 min budgets must not cut them short
        assert_ran_all_its_steps(out / name)
    npz = tmp_path / "by_colour.npz"
    cli("sample.py", "--run", out / "shapes_ldm_kl", "--num", 48, "--grid-by", "color", "--guidance", 3,
        "--steps", 20, "--eta", 1, "--no-progress", "--out", tmp_path / "by_colour.png", "--npz", npz)
    samples = np.load(npz)
    asked = samples["attributes"][:, 0]
    assert sorted(np.bincount(asked, minlength=6)) == [8] * 6, "eight samples asked for each colour"
    accuracy = (colour_of(samples["images"]) == asked).mean()
    assert accuracy > 0.5, f"colour accuracy {accuracy:.2f} (chance 1/6)"
