"""Portable models: a run loads from anywhere, exports to a pickle-free bundle, and the Python API samples
exactly like sample.py.

One tiny conditional shapes run (both stages, a dozen steps each) trained with *relative* paths from its
own working directory, as a user types the README's commands; then moved, stripped of its stage one,
exported, and loaded back from other folders and in a fresh process that cannot unpickle anything.
"""

import errno
import hashlib
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
        *LDM_TINY, "train.guide_at=0.5", cwd=home)  # and keeps its EMA of mid-run as its autoguidance guide
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
                                       "unasked": run_sample["unasked"],
                                       "autoguidance_scale": run_sample["autoguidance_scale"]}
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
    assert files == ["attribute_prior.safetensors", "autoencoder/config.json", "autoencoder/manifest.json",
                     "autoencoder/model.safetensors", "config.json", "denoiser.safetensors", "guide.safetensors",
                     "manifest.json", "normaliser.safetensors"]
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and sorted(manifest["sha256"]) == [f for f in files if f != "manifest.json"]
    assert all(hashlib.sha256((export / f).read_bytes()).hexdigest() == h for f, h in manifest["sha256"].items())
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


def test_the_runs_guide_autoguides_the_same_from_the_run_its_export_and_the_python_api(project, tmp_path):
    """train.guide_at keeps a guide; sample.py --autoguidance 2 draws the same images from the run, from its export
    and through LatentDiffusion.sample(autoguidance_scale=2), and other images than without it. A guide equal to
    the model (--guide the run itself) gives exactly the unguided images."""
    run = project / "runs" / "shapes_ldm_kl"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["guide_step"] == max(1, round(0.5 * state["config"]["train"]["steps"]))
    ldm = LatentDiffusion.from_run(run)
    assert ldm.guide is not None and any(not torch.equal(a, b) for a, b in
                                         zip(ldm.guide.state_dict().values(), ldm.denoiser.state_dict().values()))
    export = tmp_path / "exported"
    cli("export.py", "--run", run, "--out", export, cwd=tmp_path)
    for source, name in ((run, "run"), (export, "export")):
        cli("sample.py", "--run", source, *SAMPLE, "--autoguidance", 2, "--npz", tmp_path / f"{name}.npz",
            "--out", tmp_path / f"{name}.png", cwd=tmp_path)
    guided = np.load(tmp_path / "run.npz")["images"]
    assert np.array_equal(guided, np.load(tmp_path / "export.npz")["images"])
    api = ldm.sample(6, attrs={"color": "red"}, generator=torch.Generator().manual_seed(5), autoguidance_scale=2.0)
    assert np.array_equal(api.numpy(), guided)
    before = np.load(project / "before.npz")["images"]
    assert np.abs(guided - before).max() > 0  # the guide acts; a dozen steps move the EMA little, so far out:
    far = ldm.sample(6, attrs={"color": "red"}, generator=torch.Generator().manual_seed(5), autoguidance_scale=200.0,
                     guidance_interval=(0.0, 1.0))
    assert np.abs(far.numpy() - before).max() > 1e-2
    cli("sample.py", "--run", run, *SAMPLE, "--autoguidance", 2, "--guide", run, "--npz", tmp_path / "self.npz",
        "--out", tmp_path / "self.png", cwd=tmp_path)
    assert np.allclose(np.load(tmp_path / "self.npz")["images"], before, atol=1e-6)


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

    r = cli("export.py", "--run", project / "runs" / "shapes_ae_kl", "--out", tmp_path / "ae", cwd=tmp_path)
    best = project / "runs" / "shapes_ae_kl" / "checkpoints" / "best.pt"
    assert f"at step {torch.load(best, weights_only=True)['step']}, from {best}" in r.stdout
    assert sorted(os.listdir(tmp_path / "ae")) == ["config.json", "manifest.json", "model.safetensors"]
    original = load_autoencoder(best)
    loaded = Autoencoder.from_pretrained(tmp_path / "ae")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(loaded.encode(x).mode(), original.encode(x).mode())
    assert loaded.sample_shape == (3, 32, 32) and not loaded.training
    (tmp_path / "ae" / "config.json").write_text((tmp_path / "ae" / "config.json").read_text().replace("vae", "ae"))
    with pytest.raises(CheckpointError, match=r"ae/config.json changed since the bundle was exported"):
        Autoencoder.from_pretrained(tmp_path / "ae")


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


def reseal(bundle):
    """What a hand edit of the manifests can do: list every file with its present sha256, nested ones first."""
    for manifest in sorted(bundle.rglob("manifest.json"), key=lambda p: -len(p.parts)):
        folder, data = manifest.parent, json.loads(manifest.read_text())
        data["sha256"] = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                          for p in sorted(folder.rglob("*")) if p.is_file() and p != manifest}
        manifest.write_text(json.dumps(data))


def refused(bundle, *names, command_in=None):
    """The one line loading ``bundle`` is refused with, naming ``bundle`` (and ``names``). With ``command_in`` (a
    folder): also sample.py there, which exits 2 with that line and writes no images."""
    with pytest.raises(CheckpointError) as error:
        LatentDiffusion.from_run(bundle)
    line = str(error.value)
    assert len(line.splitlines()) == 1 and str(bundle) in line and all(name in line for name in names), line
    if command_in is not None:
        r = cli("sample.py", "--run", bundle, "--num", 2, "--no-progress", "--out", command_in / "x.png",
                cwd=command_in, check=False)
        assert r.returncode == 2 and r.stderr == f"error: {line}\n", r.stderr
        assert not (command_in / "x.png").exists()
    return line


# Damage the manifest does not see once it is re-sealed by hand: the checks behind it still name the file.
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
    (lambda b: rewrite(b / "guide.safetensors", lambda t: t.pop(sorted(t)[0])), "tensors missing"),
    (lambda b: rewrite(b / "autoencoder" / "model.safetensors", lambda t: t.pop(sorted(t)[-1])),
     "is not the autoencoder this diffusion model was trained on"),
])
def test_a_damaged_resealed_bundle_is_one_line_naming_the_file(bundle, damage, expected):
    damage(bundle)
    reseal(bundle)
    assert expected in refused(bundle)


def test_an_edited_config_is_refused_naming_it_where_before_it_sampled(bundle, tmp_path):
    config = json.loads((bundle / "config.json").read_text())
    assert config["diffusion"]["prediction"] == "eps"
    config["diffusion"]["prediction"] = "v"  # a valid config: without the manifest this loads and samples
    (bundle / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    line = refused(bundle, "changed since the bundle was exported", command_in=tmp_path)
    assert line.startswith(str(bundle / "config.json"))
    reseal(bundle)  # the edit plus a re-sealed manifest: accepted, so the manifest is what refused it
    assert LatentDiffusion.from_pretrained(bundle).diffusion.prediction == "v"


@pytest.mark.parametrize("damage, file, expected", [
    (lambda b: (b / "denoiser.safetensors").unlink(), "denoiser.safetensors", "missing from the bundle"),
    (lambda b: (b / "manifest.json").unlink(), "manifest.json", "is missing, so the bundle's files cannot be checked"),
    (lambda b: (b / "notes.txt").write_text("added"), "notes.txt", "is not part of the bundle"),
    (lambda b: (b / "autoencoder" / "extra.safetensors").write_bytes(b""), "autoencoder/extra.safetensors",
     "is not part of the bundle"),
    (lambda b: (b / "denoiser.safetensors").write_bytes((b / "denoiser.safetensors").read_bytes()[:-100]),
     "denoiser.safetensors", "changed since the bundle was exported"),  # truncated
])
def test_a_missing_added_or_truncated_file_is_refused_naming_it(bundle, damage, file, expected):
    damage(bundle)
    line = refused(bundle, expected)
    assert line.startswith(str(bundle / file)), line


def test_another_autoencoder_in_the_bundle_is_refused_with_both_hashes_even_resealed(bundle, tmp_path):
    from autoencoders.models import Autoencoder

    other = Autoencoder.from_pretrained(bundle / "autoencoder")  # the same architecture, other weights
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.01)
    other.save_pretrained(tmp_path / "other_ae")  # a genuine, sealed autoencoder bundle
    trained_on = json.loads((bundle / "config.json").read_text())["autoencoder_hash"]
    assert trained_on == hashlib.sha256((bundle / "autoencoder" / "model.safetensors").read_bytes()).hexdigest()
    swapped = hashlib.sha256((tmp_path / "other_ae" / "model.safetensors").read_bytes()).hexdigest()
    shutil.rmtree(bundle / "autoencoder")
    shutil.copytree(tmp_path / "other_ae", bundle / "autoencoder")
    line = refused(bundle, "changed since", swapped[:12], trained_on[:12])
    assert line.startswith(str(bundle / "autoencoder" / "model.safetensors")), line
    reseal(bundle)  # the manifests rewritten by hand to match: config.json still names the autoencoder
    line = refused(bundle, "is not the autoencoder this diffusion model was trained on", swapped[:12],
                   trained_on[:12], command_in=tmp_path)
    assert line.startswith(str(bundle / "autoencoder" / "model.safetensors")), line


def make_legacy(bundle):
    """A bundle as export.py wrote it before manifests: format_version 1, no manifest, no autoencoder_hash."""
    for config_path in bundle.rglob("config.json"):
        config = json.loads(config_path.read_text())
        config.pop("autoencoder_hash", None)
        config_path.write_text(json.dumps({**config, "format_version": 1}, indent=2))
    for manifest in bundle.rglob("manifest.json"):
        manifest.unlink()


def export_module():
    """export.py's code, to run in-process (its body may live in latentdiff/commands/, its wrapper at the root)."""
    import importlib.util

    try:
        from latentdiff.commands import export
        return export
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("export_script", ROOT / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bundle_from_before_the_manifest_loads_with_a_note_and_exports_sealed(project, bundle, tmp_path, capsys):
    before = np.load(project / "before.npz")
    make_legacy(bundle)
    ldm = LatentDiffusion.from_pretrained(bundle)
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith(f"note: {bundle} has no manifest.json"), note  # once, not per part
    assert "export again to seal it" in note[0]
    images = ldm.sample(6, attrs={"color": "red"}, generator=torch.Generator().manual_seed(5))
    assert torch.equal(images, torch.from_numpy(before["images"]))
    sealed = tmp_path / "sealed"
    export_module().main(["--run", str(bundle), "--out", str(sealed)])
    capsys.readouterr()
    assert json.loads((sealed / "manifest.json").read_text())["format_version"] == 2
    LatentDiffusion.from_pretrained(sealed)
    assert capsys.readouterr().err == ""
    (bundle / "config.json").write_text((bundle / "config.json").read_text().replace('"eps"', '"v"'))
    LatentDiffusion.from_pretrained(bundle)  # unsealed: nothing to check an edit against, which the note says


def test_a_failed_export_leaves_nothing_and_a_retry_works(project, tmp_path, monkeypatch, capsys):
    export = export_module()
    out = tmp_path / "new" / "bundle"
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / ".bundle.tmp99999").mkdir()  # what an export killed mid-way leaves
    (tmp_path / "new" / ".bundle.tmp99999" / "config.json").write_text("{}")
    real_fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 3:  # the third file of the bundle
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(SystemExit) as exit_:
        export.main(["--run", str(project / "runs" / "shapes_ldm_kl"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: could not write {out / 'attribute_prior.safetensors'}: No space left"), err[0]
    assert len(calls) == 3 and os.listdir(tmp_path / "new") == []  # no bundle, no partial folder
    monkeypatch.setattr(os, "fsync", real_fsync)
    export.main(["--run", str(project / "runs" / "shapes_ldm_kl"), "--out", str(out)])
    assert os.listdir(tmp_path / "new") == ["bundle"]
    LatentDiffusion.from_pretrained(out)


def test_exporting_a_run_still_training_names_the_step_and_the_lock(project, tmp_path, capsys):
    import socket

    from latentdiff.run_folder import RunLock

    export, run = export_module(), project / "runs" / "shapes_ldm_kl"
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert step == 12
    lock = RunLock(run).acquire()  # this process trains there, as far as export.py can tell
    try:
        export.main(["--run", str(run), "--out", str(tmp_path / "live")])
    finally:
        lock.release()
    out, err = capsys.readouterr()
    note = err.strip().splitlines()
    assert len(note) == 1 and "still training" in note[0] and f"exported step {step}," in note[0], note
    assert f"process {os.getpid()} on {socket.gethostname()}" in note[0] and str(run / ".lock") in note[0]
    assert f"at step {step}," in out
    LatentDiffusion.from_pretrained(tmp_path / "live")
    gone = subprocess.Popen(["true"])  # a lock file left by a process that died: no note, the step printed
    gone.wait()
    (run / ".lock").write_text(f"{gone.pid} {socket.gethostname()}\n")
    try:
        export.main(["--run", str(run), "--out", str(tmp_path / "stale")])
    finally:
        (run / ".lock").unlink()
    out, err = capsys.readouterr()
    assert f"at step {step}," in out and err == ""


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
