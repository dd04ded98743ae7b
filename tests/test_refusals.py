"""Refuse before work (issue 29, sampling and evaluation): a setting a run cannot honour is one line, exit 2,
before anything is sampled or encoded and with nothing written, never clipped or silently ignored.

  steps        --steps above the run's T (or below 1), in sample.py, evaluate.py, visualize.py and the Python API,
               refused in one place (``LatentDiffusion.sampling_settings``) with the same words;
  unconditional --guidance, --guidance-interval, --unasked data, --attr / --grid-by on a run trained without
               attributes (and ``guidance_scale=``, ``guidance_interval=``, ``unasked=``, ``attrs=`` in the API);
  masks        an inpainting mask with nothing to fill, or with pixels neither black nor white;
  outputs      an output evaluate.py (eval.json, the judge cache) or sample.py (its default path) cannot write.

The runs are tiny exported bundles built in this process from random weights (no training): every refusal
here comes before the weights would matter. Sampling and encoding are patched to fail, so "before any work"
is checked, not assumed.
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_faults import in_process_error

from latentdiff.diffusion import GaussianDiffusion
from latentdiff.pipeline import LatentDiffusion

T = 20
STEPS_WORDS = f"this run has T = {T} diffusion timesteps; give 1 to {T}"
UNCONDITIONAL = "this run is unconditional (trained without attributes)"


def tiny_ldm(conditional: bool) -> LatentDiffusion:
    """A random 16×16 VAE and UNet over (2, 8, 8) latents with the shapes schema, T = 20; the run's own
    sample: section asks for guidance 3 (as the library default does), which an unconditional run must not use."""
    from autoencoders import build_autoencoder
    from latentdiff.builders import build_data, build_denoiser, build_diffusion
    from latentdiff.config import DataConfig, DenoiserConfig, DiffusionConfig, from_dict
    from latentdiff.latents import LatentNormaliser

    data = {"name": "shapes", "image_size": 16, "train_size": 8, "test_size": 8}
    schema = build_data(from_dict(DataConfig, data), "test").schema
    config = {"name": "tiny", "data": data, "diffusion": {"num_timesteps": T},
              "denoiser": {"channels": 8, "channel_mults": [1], "num_res_blocks": 1, "attention_resolutions": []},
              "sample": {"sampler": "ddim", "steps": 3, "guidance_scale": 3.0}}
    torch.manual_seed(0)
    ae = build_autoencoder("vae", in_channels=3, image_size=16, base_channels=8, channel_mults=(1, 2),
                           num_res_blocks=1, latent_channels=2).eval()
    num_values = [schema.num_values(a) for a in range(len(schema.names))] if conditional else None
    denoiser = build_denoiser(from_dict(DenoiserConfig, config["denoiser"]), (2, 8, 8), num_values)
    return LatentDiffusion(build_diffusion(from_dict(DiffusionConfig, config["diffusion"])), denoiser.eval(), ae,
                           LatentNormaliser.identity(), (2, 8, 8), schema=schema, config=config)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """{"uncond": folder, "cond": folder}: the two tiny models exported (what sample.py --run accepts)."""
    root = tmp_path_factory.mktemp("bundles")
    for name, conditional in (("uncond", False), ("cond", True)):
        tiny_ldm(conditional).save_pretrained(root / name)
    return {"uncond": root / "uncond", "cond": root / "cond"}


@pytest.fixture
def no_work(monkeypatch):
    """Sampling and encoding fail the test: a refusal must come before either."""
    def work(*args, **kwargs):
        raise AssertionError("sampled or encoded before refusing")

    monkeypatch.setattr(GaussianDiffusion, "sample", work)
    monkeypatch.setattr(GaussianDiffusion, "ddim_invert", work)
    monkeypatch.setattr(LatentDiffusion, "encode", work)


def photo(folder: Path) -> Path:
    path = folder / "photo.png"
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(path)
    return path


def files_under(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- 1. steps outside 1..T


@pytest.mark.parametrize("steps", [T + 1, 5000, 0])
def test_api_refuses_steps_outside_1_to_T_in_one_place_with_the_same_words(steps, no_work):
    ldm = tiny_ldm(conditional=False)
    images, mask = torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16)
    calls = [lambda: ldm.sampling_settings(steps=steps), lambda: ldm.sample(2, steps=steps),
             lambda: ldm.sample_latents(2, steps=steps), lambda: ldm.edit(images, steps=steps),
             lambda: ldm.inpaint(images, mask, steps=steps)]
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == f"steps={steps} (--steps): {STEPS_WORDS}"
    assert ldm.sampling_settings(steps=T)["steps"] == T  # T itself is the full chain, not refused or clipped
    assert ldm.sampling_settings(sampler="dpm_solver++")["steps"] == T  # the built-in 50 is at most T


@pytest.mark.parametrize("command", [["sample.py"], ["evaluate.py", "--num", "4"], ["visualize.py", "reverse"]])
def test_commands_refuse_steps_above_T_in_one_line_before_sampling_and_write_nothing(bundles, tmp_path, capsys,
                                                                                     no_work, command):
    out = tmp_path / ("eval.json" if command[0] == "evaluate.py" else "x.png")
    line = in_process_error(capsys, command[0], *command[1:], "--run", bundles["uncond"], "--steps", 5000,
                            "--out", out)
    assert line == f"error: steps=5000 (--steps): {STEPS_WORDS}"
    assert files_under(tmp_path) == set()


# ----------------------------------------------------------------------------- 2. attribute settings, unconditional


def test_api_refuses_guidance_interval_unasked_and_attributes_on_an_unconditional_run(no_work):
    ldm = tiny_ldm(conditional=False)
    images, mask = torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16)
    for kw, words in (({"guidance_scale": 3}, "guidance_scale=3 (--guidance)"),
                      ({"guidance_scale": 0}, "guidance_scale=0 (--guidance)"),
                      ({"guidance_interval": (0.0, 0.6)}, "guidance_interval=(0.0, 0.6) (--guidance-interval)"),
                      ({"unasked": "data"}, "unasked='data' (--unasked data)"),
                      ({"attrs": {"color": "red"}}, "attrs (--attr, --grid-by)")):
        calls = [(ldm.sample, (2,))]
        if "guidance_scale" in kw or "attrs" in kw:  # what edit and inpaint take
            calls += [(ldm.edit, (images,)), (ldm.inpaint, (images, mask))]
        for call, args in calls:
            with pytest.raises(ValueError) as err:
                call(*args, **kw)
            assert str(err.value).startswith(f"{words}: {UNCONDITIONAL}, so "), (kw, str(err.value))
    # the plain model is what an unconditional run gives: its own sample: section's guidance 3 is not used, and
    # asking for w = 1 or unasked="model" (what it does anyway) is not refused
    resolved = ldm.sampling_settings(guidance_scale=1, unasked="model")
    assert (resolved["guidance_scale"], resolved["guidance_interval"], resolved["unasked"]) == (1.0, None, "model")
    assert ldm.config["sample"]["guidance_scale"] == 3.0


@pytest.mark.parametrize("flags, words", [
    (["--guidance", "3"], "guidance_scale=3 (--guidance)"),
    (["--guidance-interval", "0", "0.6"], "guidance_interval=(0.0, 0.6) (--guidance-interval)"),
    (["--unasked", "data"], "unasked='data' (--unasked data)"),
    (["--attr", "color=red"], "attrs (--attr, --grid-by)"),
    (["--grid-by", "color"], "attrs (--attr, --grid-by)"),
    (["--edit", "{photo}", "--attr", "color=red"], "attrs (--attr, --grid-by)"),
    (["--edit", "{photo}", "--guidance", "3"], "guidance_scale=3 (--guidance)"),
])
def test_sample_py_refuses_attribute_flags_on_an_unconditional_run(bundles, tmp_path, capsys, no_work, flags, words):
    flags = [f.format(photo=photo(tmp_path)) for f in flags]
    before = files_under(tmp_path)
    line = in_process_error(capsys, "sample.py", "--run", bundles["uncond"], *flags, "--out", tmp_path / "x.png",
                            "--no-progress")
    assert line.startswith(f"error: {words}: {UNCONDITIONAL}, so "), line
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("command", [["evaluate.py", "--num", "4", "--out", "{out}/eval.json", "--guidance", "3"],
                                     ["visualize.py", "attributes", "--grid-by", "color", "--out", "{out}/a.png"],
                                     ["visualize.py", "attributes", "--grid-by", "color", "--guidance", "3", "--out",
                                      "{out}/a.png"]])
def test_evaluate_and_visualize_refuse_them_too(bundles, tmp_path, capsys, no_work, command):
    command = [c.format(out=tmp_path) for c in command]
    line = in_process_error(capsys, command[0], *command[1:], "--run", bundles["uncond"])
    assert UNCONDITIONAL in line and ("--guidance" in line or "--grid-by" in line), line
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("given,named", [({"steps": 10, "eta": 0.5}, "--steps, --eta"),
                                         ({"sampler": "ddim"}, "--sampler"),
                                         ({"guidance_interval": (0, 0.6)}, "--guidance-interval"),
                                         ({"autoguidance": 2.0}, "--autoguidance")])
def test_evaluating_an_autoencoder_run_refuses_sampler_flags_instead_of_ignoring_them(given, named):
    from latentdiff.evaluation import EvalOptions, sampler_settings

    with pytest.raises(ValueError, match=f"^{named}: sampler settings apply to a diffusion run"):
        sampler_settings(EvalOptions(run="ae_run", **given), None)
    assert sampler_settings(EvalOptions(run="ae_run"), None) is None


def test_a_conditional_run_still_takes_them(bundles, tmp_path):
    ldm = LatentDiffusion.from_pretrained(bundles["cond"])
    s = ldm.sampling_settings(guidance_scale=2, guidance_interval=(0, 0.6), steps=T)
    assert (s["guidance_scale"], s["guidance_interval"], s["steps"]) == (2.0, (0.0, 0.6), T)
    assert ldm.sample(2, attrs={"color": "red"}, steps=2).shape == (2, 3, 16, 16)


# ----------------------------------------------------------------------------- 3. inpainting masks


def mask_png(folder: Path, name: str, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
    return folder / name


def half_with_a_grey_edge_pixel():
    """The left half white (keep), the right half black (fill), one anti-aliased pixel on the edge."""
    pixels = np.full((16, 16), 255)
    pixels[:, 8:] = 0
    pixels[5, 8] = 128
    return pixels


@pytest.mark.parametrize("pixels, words", [
    (np.full((16, 16), 255), "is all white (keep): nothing to fill"),
    (half_with_a_grey_edge_pixel(), "1 of 256 pixels are neither black (0) nor white (255), e.g. 128 at x=8, y=5"),
    (np.full((16, 16), 200), "256 of 256 pixels are neither black (0) nor white (255), e.g. 200 at x=0, y=0"),
])
def test_a_mask_with_nothing_to_fill_or_grey_pixels_is_one_line_before_the_model_is_loaded(tmp_path, capsys,
                                                                                            pixels, words):
    mask = mask_png(tmp_path, "mask.png", pixels)
    line = in_process_error(capsys, "sample.py", "--run", tmp_path / "no_such_run", "--inpaint", photo(tmp_path),
                            "--mask", mask, "--out", tmp_path / "x.png")
    assert line.startswith(f"error: --mask {mask}") and words in line and "no_such_run" not in line, line
    assert not (tmp_path / "x.png").exists()


def test_api_refuses_an_all_keep_mask_before_encoding_and_allows_an_all_fill_one(monkeypatch):
    ldm = tiny_ldm(conditional=False)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    encode = LatentDiffusion.encode
    monkeypatch.setattr(LatentDiffusion, "encode", lambda *a, **k: pytest.fail("encoded before refusing"))
    with pytest.raises(ValueError, match=r"^the inpainting mask is all 1 \(keep\): nothing to fill"):
        ldm.inpaint(images, torch.ones(1, 1, 16, 16), steps=2)
    monkeypatch.setattr(LatentDiffusion, "encode", encode)
    # all 0: nothing is kept, so the fills are plain samples; allowed (and no pixel is pasted back)
    filled = ldm.inpaint(images, torch.zeros(1, 1, 16, 16), steps=2, generator=torch.Generator().manual_seed(0))
    raw = ldm.inpaint(images, torch.zeros(1, 1, 16, 16), steps=2, generator=torch.Generator().manual_seed(0),
                      paste_back=False)
    assert filled.shape == images.shape and torch.equal(filled, raw)


def test_a_black_and_white_mask_is_read_as_keep_where_white():
    from latentdiff.cli import read_mask

    with tempfile.TemporaryDirectory() as d:
        pixels = np.full((4, 4), 255)
        pixels[:, 2:] = 0
        keep = read_mask(mask_png(Path(d), "m.png", pixels))
        all_black = read_mask(mask_png(Path(d), "black.png", np.zeros((4, 4))))
    assert keep.tolist() == [[True, True, False, False]] * 4 and not all_black.any()


# ----------------------------------------------------------------------------- 4. outputs that cannot be written


def refuse_writes_in(monkeypatch, folder: Path):
    """The probe of ``check_output_path`` (a temporary file in the folder) fails there as on a read-only folder.

    Tests run as root, where a 0o555 folder does not stop writes, so the refusal is simulated at the probe; the
    probe itself is a real write, so a read-only mount or a permission a real user lacks is found the same way.
    """
    real = tempfile.TemporaryFile

    def probe(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", probe)


def test_evaluate_on_a_read_only_run_says_it_cannot_write_eval_json_before_loading(bundles, tmp_path, capsys,
                                                                                   monkeypatch, no_work):
    monkeypatch.setattr(LatentDiffusion, "from_pretrained", lambda *a, **k: pytest.fail("loaded before refusing"))
    run = bundles["cond"]
    refuse_writes_in(monkeypatch, run)
    line = in_process_error(capsys, "evaluate.py", "--run", run, "--num", 4)
    assert line == f"error: --out '{run / 'eval.json'}': cannot write in {run} (Permission denied)"
    assert not (run / "eval.json").exists()


def test_evaluate_out_under_a_file_and_an_unwritable_judge_cache_are_one_line(bundles, tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("not a folder")
    line = in_process_error(capsys, "evaluate.py", "--run", bundles["cond"], "--num", 4, "--out",
                            tmp_path / "file" / "eval.json")
    assert "--out" in line and "is a file, not a folder" in line, line
    # the judge is trained on first use and cached: a cache it cannot be saved in is said before training it
    line = in_process_error(capsys, "evaluate.py", "--run", bundles["cond"], "--num", 4, "--out",
                            tmp_path / "eval.json", "--classifier-dir", tmp_path / "file" / "judges")
    assert line.startswith("error: --classifier-dir") and "is a file, not a folder" in line, line
    assert files_under(tmp_path) == {tmp_path / "file"}


def test_sample_py_checks_its_default_output_folder_before_loading(bundles, tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)  # an exported model's pictures go to ./samples/
    monkeypatch.setattr(LatentDiffusion, "from_pretrained", lambda *a, **k: pytest.fail("loaded before refusing"))
    refuse_writes_in(monkeypatch, tmp_path)
    line = in_process_error(capsys, "sample.py", "--run", bundles["uncond"], "--no-progress")
    assert line == "error: --out (default) 'samples/sample_0.png': cannot write in . (Permission denied)"
    assert files_under(tmp_path) == set()


# ----------------------------------------------------------------------------- autoguidance without a guide


@pytest.mark.parametrize("command", [["sample.py", "--out", "{out}/x.png", "--no-progress"],
                                     ["evaluate.py", "--num", "4", "--out", "{out}/eval.json"],
                                     ["sample.py", "--edit", "{photo}", "--out", "{out}/x.png"]])
def test_autoguidance_on_a_model_without_a_guide_is_one_line_before_any_work(bundles, tmp_path, capsys, no_work,
                                                                           command):
    command = [c.format(out=tmp_path, photo=photo(tmp_path)) for c in command]
    before = files_under(tmp_path)
    line = in_process_error(capsys, *command, "--run", bundles["cond"], "--autoguidance", 2)
    assert line.startswith("error: autoguidance_scale=2 (--autoguidance): this model has no guide"), line
    assert files_under(tmp_path) == before


def test_a_guide_on_other_latents_is_refused_naming_what_differs(bundles, tmp_path, capsys, no_work):
    """--guide RUN must diffuse the same latents: the unconditional tiny model is another denoiser on the same
    autoencoder, but without attributes; an autoencoder with other weights is named as such."""
    line = in_process_error(capsys, "sample.py", "--run", bundles["cond"], "--guide", bundles["uncond"],
                            "--autoguidance", 2, "--out", tmp_path / "x.png")
    assert line.startswith(f"error: guide {bundles['uncond']}: attributes None != this model's [6, 2, 3]"), line
    ldm = tiny_ldm(conditional=True)
    other = tiny_ldm(conditional=True)
    with torch.no_grad():
        next(other.autoencoder.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="guide model: autoencoder [0-9a-f]+ != this model's [0-9a-f]+"):
        ldm.use_guide(other)
    assert ldm.use_guide(tiny_ldm(conditional=True)).guide is not None  # the same latents: taken
    assert files_under(tmp_path) == set()
