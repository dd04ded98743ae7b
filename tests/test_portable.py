"""Portable models: a run loads from anywhere, exports to a pickle-free bundle, and the Python API samples
exactly like sample.py.

One tiny conditional shapes run (both stages, a dozen steps each) trained with *relative* paths from its
own working directory, as a user types the README's commands; then moved, stripped of its stage one,
exported, and loaded back from other folders and in a fresh process that cannot unpickle anything.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import step_bound
from test_end_to_end import AE_TINY, LDM_TINY, ROOT

from latentdiff.checkpoints import CheckpointError
from latentdiff.pipeline import LatentDiffusion
from latentdiff.runtime import flush_denormals

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same numerics as the in-process side (conftest)
SAMPLE = ["--num", 6, "--attr", "color=red", "--seed", 5, "--no-progress"]


def cli(script, *args, cwd, check=True):
    r = subprocess.run([sys.executable, str(ROOT / script), *step_bound(script, map(str, args))],
                       capture_output=True, text=True, cwd=cwd, env=ONE_THREAD)
    if check and r.returncode != 0:
        raise AssertionError(f"{script} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(autouse=True)
def same_denormals_as_the_commands():
    """sample.py flushes subnormals (``flush_denormals``); do the same in-process so results compare bit for bit."""
    before = torch.get_num_threads()
    flush_denormals()
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with runs/shapes_ae_kl and runs/shapes_ldm_kl, trained with relative paths."""
    home = tmp_path_factory.mktemp("project")
    cli("train_ae.py", "--config", ROOT / "configs/shapes/ae_kl.yaml", *AE_TINY, cwd=home)
    cli("train_diffusion.py", "--config", ROOT / "configs/shapes/ldm_kl.yaml", "ae.run=runs/shapes_ae_kl",
        *LDM_TINY, cwd=home)
    cli("sample.py", "--run", "runs/shapes_ldm_kl", *SAMPLE, "--npz", "before.npz", cwd=home)
    return home


def test_the_run_carries_its_autoencoder_and_names_it_relatively(project):
    run = project / "runs" / "shapes_ldm_kl"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ae = state["task"]["ae"]
    assert ae["copy"] == "autoencoder"
    config = json.loads((run / "autoencoder" / "config.json").read_text())
    assert config["kind"] == "autoencoder" and config["model"]["kind"] == "vae"
    # the copy holds the stage-one EMA weights the diffusion was trained on
    ae_state = torch.load(project / "runs" / "shapes_ae_kl" / "checkpoints" / "best.pt", weights_only=True)
    from safetensors.torch import load_file

    copy = load_file(run / "autoencoder" / "model.safetensors")
    assert copy.keys() == ae_state["ema"]["module"].keys()
    assert all(torch.equal(copy[k], ae_state["ema"]["module"][k]) for k in copy)


def test_moved_run_without_its_stage_one_samples_bit_identically_from_another_folder(project, tmp_path,
                                                                                     monkeypatch):
    before = np.load(project / "before.npz")
    moved = tmp_path / "elsewhere" / "my_runs"
    shutil.copytree(project / "runs", moved)
    shutil.rmtree(moved / "shapes_ae_kl")  # the stage-one run is gone
    other = tmp_path / "other_cwd"
    other.mkdir()
    cli("sample.py", "--run", moved / "shapes_ldm_kl", *SAMPLE, "--npz", other / "after.npz", cwd=other)
    after = np.load(other / "after.npz")
    assert np.array_equal(before["images"], after["images"]) and np.array_equal(before["latents"], after["latents"])
    # the Python API, from another working directory, with no arguments but the seed: the same images
    monkeypatch.chdir(other)
    ldm = LatentDiffusion.from_run(moved / "shapes_ldm_kl")
    images = ldm.sample(6, attrs={"color": "red"}, generator=torch.Generator().manual_seed(5))
    assert torch.equal(images, torch.from_numpy(before["images"]))


def test_python_api_defaults_are_the_runs_and_equal_sample_py_image_for_image(project):
    ldm = LatentDiffusion.from_run(project / "runs" / "shapes_ldm_kl")
    run_sample = ldm.config["sample"]
    assert ldm.sampling_settings() == {"sampler": run_sample["sampler"], "steps": run_sample["steps"],
                                       "eta": run_sample["eta"], "guidance_scale": run_sample["guidance_scale"],
                                       "guidance_interval": tuple(run_sample["guidance_interval"]),
                                       "unasked": run_sample["unasked"]}
    assert run_sample["guidance_scale"] != 1.0 and run_sample["eta"] != 0.0  # the old API defaults would differ
    before = np.load(project / "before.npz")
    images, latents = ldm.sample(6, attrs={"color": "red"}, generator=torch.Generator().manual_seed(5),
                                 return_latents=True)
    assert torch.equal(latents, torch.from_numpy(before["latents"]))
    assert torch.equal(images, torch.from_numpy(before["images"]))
    # an explicit argument overrides the run's value, and changes the result
    other = ldm.sample(6, attrs={"color": "red"}, generator=torch.Generator().manual_seed(5), guidance_scale=1.0)
    assert not torch.equal(other, images)


FORBID_PICKLE = """
import pickle, sys, torch
def refuse(*a, **k):
    raise AssertionError("loading an exported model must not unpickle")
torch.load = pickle.load = pickle.loads = refuse
pickle.Unpickler = type("Refused", (pickle.Unpickler,), {"load": refuse})  # still a class others may subclass
import numpy as np
sys.path.insert(0, sys.argv[1])
from latentdiff.pipeline import LatentDiffusion
from latentdiff.training import flush_denormals
flush_denormals()
torch.set_num_threads(1)
ldm = LatentDiffusion.from_pretrained(sys.argv[2])
images = ldm.sample(6, attrs={"color": "red"}, generator=torch.Generator().manual_seed(5))
np.save(sys.argv[3], images.numpy())
"""


def test_exported_bundle_loads_without_pickle_or_runs_and_samples_identically(project, tmp_path):
    before = np.load(project / "before.npz")
    export = tmp_path / "exported"
    cli("export.py", "--run", project / "runs" / "shapes_ldm_kl", "--out", export, cwd=tmp_path)
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
    assert files == ["attribute_prior.safetensors", "autoencoder/config.json", "autoencoder/model.safetensors",
                     "config.json", "denoiser.safetensors", "normaliser.safetensors"]
    hidden = project.parent / "hidden_runs"
    shutil.move(project / "runs", hidden)  # no runs folder anywhere the loader could look
    try:
        empty = tmp_path / "empty"
        empty.mkdir()
        r = subprocess.run([sys.executable, "-c", FORBID_PICKLE, str(ROOT), str(export), str(empty / "x.npy")],
                           capture_output=True, text=True, cwd=empty, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr
        assert np.array_equal(np.load(empty / "x.npy"), before["images"])
        cli("sample.py", "--run", export, *SAMPLE, "--npz", empty / "cli.npz", cwd=empty)
        assert np.array_equal(np.load(empty / "cli.npz")["images"], before["images"])
    finally:
        shutil.move(hidden, project / "runs")


def test_the_run_and_its_export_carry_the_training_datas_attribute_combinations(project, tmp_path):
    from latentdiff.builders import build_data
    from latentdiff.conditioning import AttributePrior
    from latentdiff.config import DataConfig, from_dict

    ldm = LatentDiffusion.from_run(project / "runs" / "shapes_ldm_kl")
    train = build_data(from_dict(DataConfig, ldm.config["data"]), "train")
    assert len(train) == 256  # LDM_TINY's data.train_size: the prior counts exactly the split it trained on
    expected = AttributePrior.from_labels(train.attributes)
    assert torch.equal(ldm.attribute_prior.rows, expected.rows)
    assert torch.equal(ldm.attribute_prior.counts, expected.counts) and int(expected.counts.sum()) == 256
    ldm.save_pretrained(tmp_path / "export")
    again = LatentDiffusion.from_pretrained(tmp_path / "export")
    assert torch.equal(again.attribute_prior.rows, expected.rows)
    assert torch.equal(again.attribute_prior.counts, expected.counts)


def test_unasked_data_conditions_on_attributes_drawn_from_the_data_and_matches_sample_py(project, tmp_path):
    ldm = LatentDiffusion.from_run(project / "runs" / "shapes_ldm_kl")
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    images, cond = ldm.sample(6, attrs={"color": "red"}, unasked="data", generator=g(), return_conditions=True)
    red = ldm.schema.index("color", "red")
    assert (cond[:, 0] == red).all() and (cond != -1).all()  # every attribute set, the asked one as asked
    rows = {tuple(r.tolist()) for r in ldm.attribute_prior.rows}
    assert all(tuple(r.tolist()) in rows for r in cond)  # only combinations the data has
    # the same as drawing x_T, then the attributes, from one generator and asking for them with the model left
    # to itself (sample draws the x_T of all n first, so the completion leaves them as with unasked="model")
    gen = g()
    noise = ldm.initial_noise(6, gen)
    drawn = ldm.complete_attributes(6, {"color": "red"}, gen)
    assert torch.equal(drawn, cond)
    assert torch.equal(images, ldm.sample(6, attrs=drawn, unasked="model", noise=noise, generator=gen))
    _, free = ldm.sample(6, attrs={"color": "red"}, unasked="model", generator=g(), return_conditions=True)
    assert (free[:, 1:] == -1).all()
    cli("sample.py", "--run", project / "runs" / "shapes_ldm_kl", "--num", 6, "--attr", "color=red", "--seed", 7,
        "--unasked", "data", "--no-progress", "--npz", tmp_path / "cli.npz", "--out", tmp_path / "x.png", cwd=tmp_path)
    cli_out = np.load(tmp_path / "cli.npz")
    assert np.array_equal(cli_out["attributes"], cond.numpy()) and np.array_equal(cli_out["images"], images.numpy())


def test_unasked_data_on_a_run_without_a_prior_is_one_line(project, tmp_path):
    run = tmp_path / "old_run"
    shutil.copytree(project / "runs" / "shapes_ldm_kl", run)
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["task"]["attribute_prior"]
    torch.save(state, ckpt)
    r = cli("sample.py", "--run", run, "--num", 2, "--unasked", "data", "--no-progress", cwd=tmp_path, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no attribute prior" in r.stderr
    r = cli("sample.py", "--run", run, "--num", 2, "--unasked", "model", "--no-progress", "--out",
            tmp_path / "ok.png", cwd=tmp_path)
    assert (tmp_path / "ok.png").is_file()


def test_the_pickle_guard_of_the_bundle_test_does_fire(tmp_path):
    """The fresh-process test above proves something only if its guard catches a torch.load."""
    script = FORBID_PICKLE.replace("LatentDiffusion.from_pretrained(sys.argv[2])", "torch.load(sys.argv[2])")
    r = subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path / "x.pt"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, env=ONE_THREAD)
    assert r.returncode != 0 and "must not unpickle" in r.stderr


def test_autoencoder_exports_alone_and_decodes_identically(project, tmp_path):
    from autoencoders.models import Autoencoder
    from latentdiff.loading import load_autoencoder

    cli("export.py", "--run", project / "runs" / "shapes_ae_kl", "--out", tmp_path / "ae", cwd=tmp_path)
    original = load_autoencoder(project / "runs" / "shapes_ae_kl" / "checkpoints" / "best.pt")
    loaded = Autoencoder.from_pretrained(tmp_path / "ae")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(loaded.encode(x).mode(), original.encode(x).mode())
    assert loaded.sample_shape == (3, 32, 32) and not loaded.training


@pytest.fixture()
def bundle(project, tmp_path):
    export = tmp_path / "bundle"
    LatentDiffusion.from_run(project / "runs" / "shapes_ldm_kl").save_pretrained(export)
    return export


def rewrite(path, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize("damage, expected", [
    (lambda b: rewrite(b / "denoiser.safetensors", lambda t: t.pop(sorted(t)[0])), "tensors missing"),
    (lambda b: rewrite(b / "denoiser.safetensors", lambda t: t.update(stray=torch.zeros(1))), "unexpected tensors"),
    (lambda b: rewrite(b / "denoiser.safetensors", lambda t: t.update({sorted(t)[0]: torch.zeros(7, 3)})),
     "has shape (7, 3)"),
    (lambda b: (b / "denoiser.safetensors").write_bytes(b"PK\x03\x04 a zip, e.g. a renamed torch.save file"),
     "is not a safetensors file"),
    (lambda b: (b / "normaliser.safetensors").unlink(), "missing from the bundle"),
    (lambda b: (b / "config.json").write_text(json.dumps({**json.loads((b / "config.json").read_text()),
                                                          "format_version": 99})), "newer than this latentdiff"),
    (lambda b: rewrite(b / "autoencoder" / "model.safetensors", lambda t: t.pop(sorted(t)[-1])), "tensors missing"),
])
def test_a_damaged_bundle_is_one_line_naming_the_file_exit_2(bundle, tmp_path, damage, expected):
    damage(bundle)
    r = cli("sample.py", "--run", bundle, "--num", 2, "--no-progress", cwd=tmp_path, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert expected in lines[0] and str(bundle) in lines[0], lines[0]
    with pytest.raises(CheckpointError, match="bundle|safetensors|config.json"):
        LatentDiffusion.from_pretrained(bundle)


def test_a_changed_autoencoder_copy_is_refused(project, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(project / "runs" / "shapes_ldm_kl", run)
    rewrite(run / "autoencoder" / "model.safetensors",
            lambda t: t.update({k: v * 1.01 for k, v in t.items() if v.is_floating_point()}))
    with pytest.raises(CheckpointError, match="changed since this diffusion run was trained"):
        LatentDiffusion.from_run(run)


def test_a_run_from_before_the_copy_still_loads_by_its_path_with_a_note(project, tmp_path, capsys):
    run = tmp_path / "old_run"
    shutil.copytree(project / "runs" / "shapes_ldm_kl", run)
    shutil.rmtree(run / "autoencoder")
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    for key in ("copy", "copy_hash"):
        del state["task"]["ae"][key]
    torch.save(state, ckpt)
    old = LatentDiffusion.from_run(run)
    note = capsys.readouterr().err
    assert "absolute path" in note and "export.py" in note and len(note.strip().splitlines()) == 1
    new = LatentDiffusion.from_run(project / "runs" / "shapes_ldm_kl")
    assert all(torch.equal(a, b) for a, b in zip(old.autoencoder.state_dict().values(),
                                                 new.autoencoder.state_dict().values()))


def test_export_refuses_a_non_empty_target_and_a_missing_run(project, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    r = cli("export.py", "--run", project / "runs" / "shapes_ldm_kl", "--out", tmp_path / "taken", cwd=tmp_path,
            check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not an empty folder" in r.stderr
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    r = cli("export.py", "--run", tmp_path / "nope", "--out", tmp_path / "new", cwd=tmp_path, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr
