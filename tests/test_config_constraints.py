"""Every constraint a constructor enforces is refused by config validation first: exit 2, one line naming
the dotted key, from ``--print-config`` (before any data is read).

Three sweeps: the rules between keys (``latentdiff.config.CONSTRAINTS``; the table below must cover every
one of them), every field's own bounds (generated from the field metadata, so a new bound is tested as soon
as it is declared), and a few boundary values that must stay accepted (a rule may not be stricter than the
constructor it mirrors).
"""

import dataclasses
import runpy
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pytest

import latentdiff.builders
import latentdiff.data
from latentdiff.config import CONSTRAINTS, AERunConfig, ClassifierRunConfig, JointRunConfig, LDMRunConfig, dump_yaml

ROOT = Path(__file__).resolve().parents[1]
# An autoencoder run folder as train_ae.py leaves it, as far as validation reads it (its config.yaml):
# the default shapes VAE, 32×32 images → 4×8×8 latents.
AE_RUN = Path(tempfile.mkdtemp(prefix="latentdiff_ae_run_"))


def case_id(words) -> str:
    """A test id that is the same in every process (pytest-xdist workers each make their own AE_RUN)."""
    return " ".join(words).replace(str(AE_RUN), "<ae_run>").replace(str(RAE_LDM_RUN), "<rae_ldm_run>")
(AE_RUN / "config.yaml").write_text(dump_yaml(AERunConfig()))
# A stage-two run folder on a deterministic autoencoder, as far as joint training's validation reads it: the kind in
# its autoencoder/config.json.
RAE_LDM_RUN = Path(tempfile.mkdtemp(prefix="latentdiff_rae_ldm_run_"))
(RAE_LDM_RUN / "autoencoder").mkdir()
(RAE_LDM_RUN / "autoencoder" / "config.json").write_text('{"model": {"kind": "rae"}}')
RUN_CLASSES = {"train_ae.py": AERunConfig, "train_diffusion.py": LDMRunConfig,
               "train_classifier.py": ClassifierRunConfig, "train_joint.py": JointRunConfig}

# (command, overrides that break exactly one rule, the dotted key the one-line error must name)
VIOLATIONS = [
    # GaussianDiffusion and its schedule
    ("train_diffusion.py", ["diffusion.num_timesteps=1"], "diffusion.num_timesteps"),
    ("train_diffusion.py", ["diffusion.beta_start=0"], "diffusion.beta_start"),
    ("train_diffusion.py", ["diffusion.beta_end=1"], "diffusion.beta_end"),
    ("train_diffusion.py", ["diffusion.beta_start=0.01", "diffusion.beta_end=0.001"], "diffusion.beta_end"),
    ("train_diffusion.py", ["diffusion.min_snr_gamma=0"], "diffusion.min_snr_gamma"),
    ("train_diffusion.py", ["diffusion.beta_schedule=cosine"], "diffusion.prediction"),
    # the EMA (optim.EMA, optim.power_ema_gamma)
    ("train_diffusion.py", ["train.ema_sigma_rel=0.3"], "train.ema_sigma_rel"),
    ("train_ae.py", ["train.ema_sigma_rel=0"], "train.ema_sigma_rel"),
    ("train_diffusion.py", ["train.ema_sigma_rel=0.1", "train.ema_decay=null"], "train.ema_sigma_rel"),
    ("train_diffusion.py", ["train.guide_at=1.0"], "train.guide_at"),
    ("train_ae.py", ["train.guide_at=0.25"], "train.guide_at"),
    ("train_joint.py", ["train.guide_at=0.25"], "train.guide_at"),
    ("train_joint.py", ["start.run=null"], "start.run"),
    ("train_joint.py", [f"start.run={RAE_LDM_RUN}"], "start.run"),
    ("train_diffusion.py", ["sample.autoguidance_scale=2"], "sample.autoguidance_scale"),
    # the samplers
    ("train_diffusion.py", ["sample.sampler=ddpm", "sample.eta=0.5"], "sample.eta"),
    ("train_diffusion.py", ["sample.steps=1001"], "sample.steps"),
    ("train_diffusion.py", ["diffusion.num_timesteps=100", "sample.steps=101"], "sample.steps"),
    ("train_diffusion.py", ["sample.guidance_interval=[0.6,0.2]"], "sample.guidance_interval"),
    ("train_diffusion.py", ["sample.guidance_interval=[0.2,1.5]"], "sample.guidance_interval"),
    # the denoiser
    ("train_diffusion.py", ["denoiser.channel_mults=[]"], "denoiser.channel_mults"),
    ("train_diffusion.py", ["denoiser.channel_mults=[1,0]"], "denoiser.channel_mults"),
    ("train_diffusion.py", ["denoiser.attention_resolutions=[0]"], "denoiser.attention_resolutions"),
    ("train_diffusion.py", ["denoiser.num_heads=3"], "denoiser.num_heads"),
    ("train_diffusion.py", ["data.name=swissroll", "denoiser.kind=unet"], "denoiser.kind"),
    ("train_diffusion.py", ["data.name=swissroll", "conditioning.enabled=true"], "conditioning.enabled"),
    ("train_diffusion.py", ["data.name=image_folder", f"data.root={ROOT}", "conditioning.enabled=true"],
     "conditioning.enabled"),
    # ... against the latents of ae.run (8×8 here), read from its config.yaml before any data
    ("train_diffusion.py", [f"ae.run={AE_RUN}", "denoiser.attention_resolutions=[2]"],
     "denoiser.attention_resolutions"),
    ("train_diffusion.py", [f"ae.run={AE_RUN}", "denoiser.channel_mults=[1,1,1,1,1]"], "denoiser.channel_mults"),
    # a stage-one run that does not exist (and no run folder to resume on its own copy)
    ("train_diffusion.py", [f"ae.run={AE_RUN / 'missing'}", f"out_dir={AE_RUN}"], "ae.run"),
    # stage one
    ("train_ae.py", ["model.channel_mults=[1,2,2,2,2]"], "model.channel_mults"),
    ("train_ae.py", ["model.channel_mults=[1,0]"], "model.channel_mults"),
    ("train_ae.py", ["model.dropout=1"], "model.dropout"),
    ("train_ae.py", ["data.image_size=30"], "data.image_size"),
    ("train_ae.py", ["data.name=moons"], "data.name"),
    ("train_ae.py", ["model.kind=vae", "loss.decoder_regulariser=grad_penalty"], "loss.decoder_regulariser"),
    ("train_ae.py", ["model.kind=rae", "loss.decoder_regulariser=spectral_norm"], "loss.decoder_regulariser"),
    # the datasets
    ("train_diffusion.py", ["data.name=swissroll", "data.image_size=32"], "data.image_size"),
    ("train_ae.py", ["data.image_size=4", "model.channel_mults=[1]"], "data.image_size"),
    ("train_ae.py", ["data.name=image_folder"], "data.root"),
    ("train_ae.py", ["data.name=image_folder", f"data.root={ROOT}", "data.download=true"], "data.download"),
    ("train_ae.py", ["data.options.small=0.3"], "data.options.small"),
    ("train_ae.py", ["data.options.large=0.6"], "data.options.small"),
    ("train_ae.py", ["data.options.small=abc"], "data.options.small"),
    ("train_ae.py", ["data.options.antialias=0"], "data.options.antialias"),
    ("train_ae.py", ["data.name=image_folder", f"data.root={ROOT}", "data.options.channels=2"],
     "data.options.channels"),
    ("train_ae.py", ["data.name=image_folder", f"data.root={ROOT}", "data.options.on_bad_file=ignore"],
     "data.options.on_bad_file"),
    ("train_ae.py", ["data.name=image_folder", f"data.root={ROOT}", "data.options.test_fraction=1"],
     "data.options.test_fraction"),
    ("train_diffusion.py", ["data.name=gaussian_mixture", "data.options.num_components=0"],
     "data.options.num_components"),
]

# Boundary values the constructors accept: the rules must accept them too.
ACCEPTED = [
    ("train_diffusion.py", ["diffusion.num_timesteps=2", "sample.steps=2"]),
    ("train_diffusion.py", ["diffusion.beta_start=1e-8", "diffusion.beta_end=0.999"]),
    ("train_diffusion.py", ["diffusion.beta_start=0.02", "diffusion.beta_end=0.02"]),
    ("train_diffusion.py", ["diffusion.beta_schedule=cosine", "diffusion.beta_start=0", "diffusion.prediction=v"]),
    ("train_diffusion.py", ["sample.sampler=ddpm", "sample.eta=0", "sample.steps=1000"]),
    ("train_diffusion.py", ["sample.sampler=ddim", "sample.eta=1", "sample.steps=null"]),
    ("train_diffusion.py", ["data.name=swissroll", "denoiser.kind=auto", "denoiser.num_heads=3"]),
    ("train_ae.py", ["model.kind=rae", "loss.decoder_regulariser=spectral_norm", "model.spectral_norm=true"]),
    ("train_diffusion.py", [f"ae.run={AE_RUN}", "denoiser.attention_resolutions=[8,4]"]),
    ("train_diffusion.py", ["data.name=moons", "conditioning.enabled=true"]),
    ("train_diffusion.py", [f"ae.run={AE_RUN}", "denoiser.channel_mults=[1,1,1,1]",
                            "denoiser.attention_resolutions=[1]"]),
    ("train_ae.py", ["data.image_size=28", "model.channel_mults=[1,2,4]"]),
    ("train_ae.py", ["data.options.small=0.1", "data.options.large=0.5", "data.options.antialias=4"]),
]


def _prefixes(run_cls, section, prefix=""):
    """The dotted prefixes under which ``section`` appears in ``run_cls`` ("" for the run itself)."""
    if run_cls is section:
        yield prefix
    hints = typing.get_type_hints(run_cls)
    for f in dataclasses.fields(run_cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _prefixes(hints[f.name], section, f"{prefix}{f.name}.")


@pytest.fixture(scope="module")
def mains():
    return {script: runpy.run_path(str(ROOT / script))["main"] for script in RUN_CLASSES}


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    """Reading a dataset fails the test: every one of these must be refused before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was read before the config was validated")

    monkeypatch.setattr(latentdiff.data, "build_dataset", refuse)
    monkeypatch.setattr(latentdiff.builders, "build_data", refuse)


def print_config(mains, script, overrides, capsys):
    argv = ["--print-config", *overrides]
    if script == "train_classifier.py":
        argv = ["--run", str(ROOT), *argv]
    if script == "train_joint.py":  # the run it starts from (read only where it exists)
        argv = [argv[0], f"start.run={AE_RUN}", *argv[1:]]
    with pytest.raises(SystemExit) as exit_info:
        mains[script](argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.err


@pytest.mark.parametrize("script,overrides,key", VIOLATIONS, ids=[case_id(v[1]) for v in VIOLATIONS])
def test_each_rule_between_keys_is_one_line_naming_the_key(mains, capsys, script, overrides, key):
    code, err = print_config(mains, script, overrides, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith(f"error: {key}:"), lines[0]


def test_the_table_covers_every_registered_rule():
    covered = {key for _, _, key in VIOLATIONS}
    for c in CONSTRAINTS:
        keys = {p + c.key for run in RUN_CLASSES.values() for p in _prefixes(run, c.section)}
        assert keys & covered, f"no config in VIOLATIONS breaks the rule on {sorted(keys)}: {c.rule}"


def _bound_violations():
    """(script, override, key) breaking each field's declared min / max, for every field that declares one."""
    cases = []
    for script, run_cls in RUN_CLASSES.items():
        def walk(cls, prefix, script=script):
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                tp = hints[f.name]
                if dataclasses.is_dataclass(tp):
                    walk(tp, f"{prefix}{f.name}.")
                    continue
                meta = f.metadata or {}
                integer = int in (tp, *typing.get_args(tp))
                step = 1 if integer else 0.5
                if meta.get("min") is not None:
                    cases.append((script, f"{prefix}{f.name}={meta['min'] - step}", f"{prefix}{f.name}"))
                if meta.get("max") is not None:
                    cases.append((script, f"{prefix}{f.name}={meta['max'] + step}", f"{prefix}{f.name}"))
        walk(run_cls, "")
    return cases


BOUNDS = _bound_violations()


def test_bound_sweep_includes_the_learning_rate():
    # the field-metadata sweep is only as good as the metadata: losing train.lr's bound must show here
    assert ("train_ae.py", "train.lr=-0.5", "train.lr") in BOUNDS


@pytest.mark.parametrize("script,override,key", BOUNDS, ids=[case_id(b[:2]) for b in BOUNDS])
def test_each_declared_bound_is_one_line_naming_the_key(mains, capsys, script, override, key):
    code, err = print_config(mains, script, [override], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith(f"error: {key}:"), lines[0]


@pytest.mark.parametrize("script,overrides", ACCEPTED, ids=[case_id(a[1]) for a in ACCEPTED])
def test_boundary_values_the_constructors_accept_pass(mains, capsys, script, overrides):
    code, err = print_config(mains, script, overrides, capsys)
    assert code == 0, err


def test_the_command_itself_refuses_before_work():
    r = subprocess.run([sys.executable, str(ROOT / "train_diffusion.py"), "--config",
                        str(ROOT / "configs/toy/swissroll.yaml"), "sample.sampler=ddpm", "sample.eta=0.5"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: sample.eta:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
