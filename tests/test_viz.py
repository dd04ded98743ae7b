"""Picture commands (visualize.py) on tiny runs: valid PNG/GIF files of the expected size and frame count."""

import pytest
import torch
from PIL import Image
from test_end_to_end import ROOT, cli, runs  # noqa: F401  (runs: the tiny two-stage fixture)

import visualize
from latentdiff.diffusion import GaussianDiffusion
from latentdiff.viz import forward_process_frames, reverse_process_grid, reverse_process_scatter, save_gif

PAD = 2  # image_grid's padding


def grid_side(count: int, cell: int) -> int:
    return count * (cell + PAD) + PAD


def test_forward_frames_follow_q_xt_given_x0_with_one_fixed_noise():
    """Frame k is √ᾱ_t x0 + √(1−ᾱ_t) ε (Eq. 4) at evenly spaced t, with the same ε in every frame."""
    d = GaussianDiffusion(num_timesteps=50)
    x0 = torch.full((3, 2), 2.0)
    frames = forward_process_frames(d, x0, lambda x: x.clone(), num_frames=5,
                                    generator=torch.Generator().manual_seed(0))
    assert len(frames) == 5
    ts = [0, 12, 24, 37, 49]  # linspace(0, 49, 5) rounded
    eps = [(f - d.sqrt_alphas_cumprod[t] * x0) / d.sqrt_one_minus_alphas_cumprod[t] for f, t in zip(frames, ts)]
    for e in eps[1:]:
        assert torch.allclose(e, eps[0], atol=1e-4), "every frame must use the same ε"
    assert torch.allclose(eps[0], torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), atol=1e-4)


def test_reverse_grid_has_two_rows_per_sample_and_one_column_per_kept_step():
    traj = {"t": torch.arange(20), "x_t": torch.zeros(20, 3, 1, 4, 4), "x0_pred": torch.ones(20, 3, 1, 4, 4)}
    grid = reverse_process_grid(traj, lambda z: z, nrow_max=5)
    assert grid.shape[1:] == (grid_side(6, 4), grid_side(5, 4))


def test_reverse_scatter_puts_x_t_above_x0_predictions_at_their_coordinates():
    """Two strips of panels; a point at (u, v) lands at column (u/e + 1)/2·(S−1), row (1 − (v/e + 1)/2)·(S−1)."""
    size, extent = 21, 4.0
    x_t = torch.zeros(5, 1, 2)  # every state at the origin
    x0 = torch.tensor([[[2.0, -4.0]]]).expand(5, 1, 2)  # every prediction at (extent/2, −extent)
    grid = reverse_process_scatter({"t": torch.arange(5), "x_t": x_t, "x0_pred": x0}, columns=3, size=size,
                                   extent=extent)
    assert grid.shape == (3, grid_side(2, size), grid_side(3, size))
    for col in range(3):
        left = PAD + col * (size + PAD)
        top = grid[:, PAD:PAD + size, left:left + size]
        bottom = grid[:, 2 * PAD + size:2 * PAD + 2 * size, left:left + size]
        assert top.sum(0).nonzero().tolist() == [[10, 10]]  # the centre pixel, white
        assert bottom.sum(0).nonzero().tolist() == [[20, 15]]  # bottom row, three quarters across
        assert torch.equal(top[:, 10, 10], torch.ones(3))


def test_save_gif_writes_every_frame(tmp_path):
    frames = [torch.full((3, 10, 12), i / 4) for i in range(4)]
    with Image.open(save_gif(frames, tmp_path / "a.gif")) as im:
        assert im.n_frames == 4 and im.size == (12, 10)


def test_each_picture_command_writes_an_image_of_the_expected_size(runs, tmp_path):  # noqa: F811
    out, _ = runs
    run = str(out / "shapes_ldm_kl")
    side = 32  # shapes images
    visualize.main(["forward", "--run", run, "--out", str(tmp_path / "f.gif"), "--frames", "5", "--num", "3"])
    with Image.open(tmp_path / "f.gif") as im:
        assert im.n_frames == 5 and im.size == (grid_side(3, side), grid_side(1, side))
    visualize.main(["reverse", "--run", run, "--out", str(tmp_path / "r.png"), "--num", "2", "--steps", "6",
                    "--columns", "3"])
    with Image.open(tmp_path / "r.png") as im:
        assert im.size == (grid_side(3, side), grid_side(4, side))
    visualize.main(["interpolate", "--run", run, "--out", str(tmp_path / "i.png"), "--pairs", "2", "--n", "4",
                    "--steps", "4"])
    with Image.open(tmp_path / "i.png") as im:
        assert im.size == (grid_side(4, side), grid_side(2, side))
    visualize.main(["attributes", "--run", run, "--out", str(tmp_path / "a.png"), "--attr-grid", "color",
                    "--per-row", "2", "--steps", "3"])
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (grid_side(2, side), grid_side(6, side))  # six colours


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny DDPM on 2-D swiss-roll points (no autoencoder)."""
    out = tmp_path_factory.mktemp("toy")
    cli("train_diffusion.py", "--config", ROOT / "configs/toy/swissroll.yaml", f"out_dir={out}",
        "train.steps=4", "train.batch_size=64", "data.train_size=500", "data.test_size=300", "train.eval_every=4",
        "train.image_every=4", "bound_every=4", "sample.num=50", "diffusion.num_timesteps=20")
    return str(out / "toy_swissroll")


def test_forward_gif_and_reverse_strip_of_a_2d_toy_run(toy_run, tmp_path):
    visualize.main(["forward", "--run", toy_run, "--out", str(tmp_path / "s.gif"), "--frames", "4"])
    with Image.open(tmp_path / "s.gif") as im:
        assert im.n_frames == 4 and im.size == (256, 256)
    visualize.main(["reverse", "--run", toy_run, "--out", str(tmp_path / "r.png"), "--steps", "6",
                    "--columns", "3"])
    with Image.open(tmp_path / "r.png") as im:
        assert im.size == (grid_side(3, 128), grid_side(2, 128))  # x_t and x̂0 strips of 128-pixel panels


def test_interpolating_a_2d_toy_run_is_one_clear_line(toy_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main(["interpolate", "--run", toy_run, "--out", str(tmp_path / "i.png")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "2-D points" in lines[0], lines
    assert not (tmp_path / "i.png").exists()


@pytest.mark.parametrize("args, words", [(["reverse", "--out", "x.png"], None),
                                         (["forward", "--out", "x.png"], "name it .gif"),
                                         (["attributes", "--out", "x.png", "--grid-by", "colour"], "valid: color")])
def test_bad_input_is_one_clear_line(runs, tmp_path, args, words):  # noqa: F811
    out, _ = runs
    run = out / "shapes_ldm_kl" if words else tmp_path / "missing"
    r = cli("visualize.py", args[0], "--run", run, *args[1:], check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert words is None or words in lines[0]


def test_gallery_script_writes_every_picture_from_tiny_runs(runs, toy_run, tmp_path):  # noqa: F811
    import importlib.util

    spec = importlib.util.spec_from_file_location("gallery", ROOT / "docs" / "gallery.py")
    gallery = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gallery)
    out, _ = runs
    gallery.main(["--shapes", str(out / "shapes_ldm_kl"), "--toy", toy_run, "--ae", str(out / "shapes_ae_kl"),
                  "--out", str(tmp_path)])
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"shapes_triangles_by_color.png", "shapes_red_by_shape.png", "shapes_forward.gif",
                       "shapes_reverse.png", "shapes_interpolation.png", "swissroll_forward.gif",
                       "swissroll_reverse.png", "shapes_ae_kl_reconstructions.png", "shapes_edit_by_color.png",
                       "shapes_inpaint_right_half.png"}
    with Image.open(tmp_path / "shapes_edit_by_color.png") as im:  # 4 test images, each then one edit per colour
        assert im.size == (grid_side(7, 32), grid_side(4, 32))
    with Image.open(tmp_path / "shapes_ae_kl_reconstructions.png") as im:  # 16 pairs, 8 images a row
        assert im.size == (grid_side(8, 32), grid_side(4, 32))
