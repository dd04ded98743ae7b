"""Tiny end-to-end runs of the commands: both stages on shapes, the cache, sample.py, clear errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import step_bound

ROOT = Path(__file__).resolve().parents[1]

AE_TINY = ["train.steps=12", "data.train_size=256", "data.test_size=64", "eval_samples=32",
           "train.batch_size=32", "train.eval_every=6", "train.image_every=6", "model.base_channels=16"]
LDM_TINY = ["train.steps=12", "data.train_size=256", "data.test_size=64", "bound_examples=16",
            "train.batch_size=32", "train.eval_every=6", "train.image_every=12", "bound_every=12",
            "sample.num=12", "sample.steps=4", "denoiser.channels=32"]


def cli(script, *args, check=True, cwd=None):
    """Run a command as a user would; training commands are bound by their steps (conftest.STEP_BOUND)."""
    result = subprocess.run([sys.executable, str(ROOT / script), *step_bound(script, map(str, args))],
                            capture_output=True, text=True, cwd=cwd or ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cli("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", f"out_dir={out}", *AE_TINY)
    first = cli("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
                f"ae.run={out / 'shapes_ae_kl'}", *LDM_TINY)
    return out, first


def assert_ran_all_its_steps(run_dir):
    """A test's run is bound by its steps: no time budget in its config, and last.pt at train.steps."""
    import yaml

    from latentdiff.checkpoints import load_checkpoint

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["train"]["max_minutes"] is None, "tests must not inherit a recipe's wall-clock budget"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == cfg["train"]["steps"]


def test_both_stages_write_checkpoints_configs_and_sample_grids(runs):
    out, first = runs
    for name in ("shapes_ae_kl", "shapes_ldm_kl"):
        assert (out / name / "checkpoints" / "last.pt").exists()
        assert (out / name / "config.yaml").exists()
        assert_ran_all_its_steps(out / name)
    assert (out / "shapes_ldm_kl" / "samples" / "latest.png").exists()
    assert "encoding latents" in first.stderr or "latent cache" not in first.stdout


def test_a_second_diffusion_run_hits_the_latent_cache(runs):
    out, _ = runs
    again = cli("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
                f"ae.run={out / 'shapes_ae_kl'}", "name=second", *LDM_TINY)
    assert "latent cache hit" in again.stdout
    assert len(list((out / "latent_cache").iterdir())) == 2  # train and test splits, nothing rebuilt


def test_sample_writes_grid_and_npz_of_the_documented_layout_reproducibly(runs, tmp_path):
    out, _ = runs
    args = ["--run", out / "shapes_ldm_kl", "--num", 6, "--steps", 4, "--attr", "color=red", "--no-progress",
            "--seed", 3]
    cli("sample.py", *args, "--out", tmp_path / "a.png", "--npz", tmp_path / "a.npz", cwd=tmp_path)
    cli("sample.py", *args, "--out", tmp_path / "b.png", "--npz", tmp_path / "b.npz")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["images"].shape == (6, 3, 32, 32) and a["images"].dtype == np.float32
    assert a["images"].min() >= -1 and a["images"].max() <= 1
    assert a["latents"].shape == (6, 4, 8, 8)
    assert list(a["attribute_names"]) == ["color", "size", "shape"]
    # red asked; the recipe's sample.unasked=data draws size and shape from the data's combinations
    assert (a["attributes"][:, 0] == 0).all() and (a["attributes"] >= 0).all(), a["attributes"]
    cli("sample.py", *args, "--unasked", "model", "--out", tmp_path / "c.png", "--npz", tmp_path / "c.npz")
    assert np.array_equal(np.load(tmp_path / "c.npz")["attributes"], np.array([[0, -1, -1]] * 6)), \
        "--unasked model: size and shape left to the network"
    assert np.array_equal(a["images"], b["images"]), "one seed, one result"
    # the npz's latents are the normalised latents its images were decoded from
    from latentdiff.pipeline import LatentDiffusion

    ldm = LatentDiffusion.from_run(out / "shapes_ldm_kl")
    decoded = ldm.decode(torch.from_numpy(a["latents"])).numpy()
    assert np.allclose(decoded, a["images"], atol=1e-5)
    assert (tmp_path / "a.png").stat().st_size > 100


def test_unknown_attribute_value_is_one_clear_line(runs):
    out, _ = runs
    r = cli("sample.py", "--run", out / "shapes_ldm_kl", "--num", 2, "--attr", "color=purple", check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "purple" in lines[0] and "red" in lines[0]


def test_changed_autoencoder_is_a_clear_error_and_rebuilds_the_cache(runs, tmp_path):
    out, _ = runs
    import shutil

    from safetensors.torch import load_file, save_file

    ae_copy = tmp_path / "ae_copy"
    shutil.copytree(out / "shapes_ae_kl", ae_copy)
    ldm_copy = tmp_path / "ldm_copy"
    shutil.copytree(out / "shapes_ldm_kl", ldm_copy)
    # Change the diffusion run's own copy of its autoencoder: every load checks the copy's hash.
    weights = ldm_copy / "autoencoder" / "model.safetensors"
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    r = cli("sample.py", "--run", ldm_copy, "--num", 2, check=False)
    assert r.returncode == 2 and "changed since this diffusion run was trained" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "model.safetensors" in r.stderr
    # training on a changed autoencoder encodes a fresh cache
    ae_ckpt = next((ae_copy / "checkpoints").glob("best.pt"))
    ae_state = torch.load(ae_ckpt, weights_only=True)
    for v in ae_state["ema"]["module"].values():
        if v.is_floating_point():
            v.add_(0.01)
    torch.save(ae_state, ae_ckpt)
    r = cli("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
            f"ae.run={ae_copy}", "name=third", *LDM_TINY)
    assert "latent cache hit" not in r.stdout
    assert len(list((out / "latent_cache").iterdir())) == 4


def test_autoencoder_with_other_image_shape_is_a_clear_error(runs):
    out, _ = runs
    r = cli("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", f"out_dir={out}",
            f"ae.run={out / 'shapes_ae_kl'}", "name=bad", "data.image_size=64", *LDM_TINY, check=False)
    assert r.returncode == 2 and "trained on images (3, 32, 32)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_quickstart_trains_both_stages_by_their_steps_alone(tmp_path):
    """The quick start's result must not depend on the machine's speed: each stage's resolved config has the
    quick start's steps and no wall-clock budget (the recipes' max_minutes would cut a slow machine short)."""
    sys.path.insert(0, str(ROOT))
    import quickstart

    (tmp_path / "shapes_ae_kl").mkdir()  # stage two's config check wants its ae.run folder to exist
    expected = {"train_ae.py": quickstart.QUICK_AE_STEPS, "train_diffusion.py": quickstart.QUICK_LDM_STEPS}
    for script, *args in quickstart.commands(tmp_path, tiny=False)[:2]:
        r = subprocess.run([sys.executable, str(ROOT / script), *args, "--print-config"], capture_output=True,
                           text=True, check=True)
        train = yaml.safe_load(r.stdout)["train"]
        assert (train["steps"], train["max_minutes"]) == (expected[script], None), script


def test_toy_swissroll_trains_directly_on_points(tmp_path):
    cli("train_diffusion.py", "--config", ROOT / "configs/toy/swissroll.yaml", f"out_dir={tmp_path}",
        "train.steps=30", "data.train_size=2000", "data.test_size=500", "train.eval_every=30",
        "train.image_every=30", "bound_every=30", "sample.num=200", "diffusion.num_timesteps=100")
    assert (tmp_path / "toy_swissroll" / "samples" / "latest.png").exists()


def test_diffusion_run_logs_scalars_sample_grids_and_the_reverse_process_to_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = runs
    acc = EventAccumulator(str(out / "shapes_ldm_kl" / "tb"))
    acc.Reload()
    assert {"samples/ema_fixed_noise", "samples/reverse_process"} <= set(acc.Tags()["images"])
    assert {"train/loss", "train/loss_by_t/q1"} <= set(acc.Tags()["scalars"])
