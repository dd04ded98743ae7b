"""`pip install .` gives working commands on the PATH, with the recipes reachable by name.

The package is built offline (no index, no build isolation: the setuptools already installed builds the wheel)
into a temporary prefix, and its commands run from another folder with only that prefix on the path, so they can
see neither the source checkout nor its configs/.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latentdiff.cli import parse_cli, recipe_path
from latentdiff.config import LDMRunConfig, dump_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
COMMANDS = ("train-ae", "train-diffusion", "train-classifier", "train-joint", "sample", "evaluate", "export",
            "visualize", "quickstart")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install --no-deps --target PREFIX`` of a copy of the sources (the build writes build/ and egg-info
    next to pyproject.toml, which must not litter the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    for name in ("latentdiff", "autoencoders", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(ROOT / name, source / name)
    prefix = tmp / "prefix"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--target", str(prefix), str(source)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return prefix, elsewhere


def command(installed, name, *args):
    prefix, elsewhere = installed
    env = {**os.environ, "PYTHONPATH": str(prefix)}
    return subprocess.run([str(prefix / "bin" / f"latentdiff-{name}"), *args], cwd=elsewhere, env=env,
                          capture_output=True, text=True)


def test_the_install_holds_every_module_every_recipe_and_every_command(installed):
    prefix, _ = installed
    for package in ("latentdiff", "autoencoders"):  # pyproject.toml lists the packages by hand
        modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert modules == {p.relative_to(prefix).as_posix() for p in (prefix / package).rglob("*.py")}
    shipped = prefix / "latentdiff" / "recipes"
    assert sorted(p.relative_to(shipped).with_suffix("").as_posix() for p in shipped.rglob("*.yaml")) == RECIPES
    for name in RECIPES:
        assert (shipped / f"{name}.yaml").read_bytes() == (ROOT / "configs" / f"{name}.yaml").read_bytes()
    assert not (prefix / "configs").exists()  # by name, the installed commands can only find latentdiff/recipes
    assert sorted(p.name for p in (prefix / "bin").iterdir()) == sorted(f"latentdiff-{c}" for c in COMMANDS)


def test_an_installed_command_prints_its_help_from_another_folder(installed):
    r = command(installed, "train-ae", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: latentdiff-train-ae [-h] [--config CONFIG] [--print-config]")
    assert "Stage one: train an autoencoder (VAE, RAE or plain AE) on images." in r.stdout


def test_an_installed_command_reads_a_recipe_by_name_from_another_folder(installed):
    r = command(installed, "train-diffusion", "--config", "fashion_mnist/ldm_kl", "--print-config", "ae.run=null")
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["name"] == "fashion_mnist_ldm_kl" and printed["diffusion"]["prediction"] == "v"
    assert printed["sample"]["sampler"] == "dpm_solver++" and printed["sample"]["guidance_interval"] == [0.0, 0.6]
    assert r.stdout == dump_yaml(load_config(LDMRunConfig, ROOT / "configs/fashion_mnist/ldm_kl.yaml",
                                             ["ae.run=null"]))


def test_config_names_resolve_to_the_recipes_and_paths_stay_paths(tmp_path, capsys):
    assert Path(recipe_path("fashion_mnist/ldm_kl")) == ROOT / "configs" / "fashion_mnist" / "ldm_kl.yaml"
    assert recipe_path("configs/shapes/ae_kl.yaml") == "configs/shapes/ae_kl.yaml"  # a path, as given
    own = tmp_path / "toy" / "swissroll"  # an existing file wins over the recipe of the same name
    own.parent.mkdir()
    own.write_text("name: mine\n")
    assert recipe_path(str(own)) == str(own)
    by_name, _ = parse_cli(LDMRunConfig, ["--config", "toy/swissroll"])
    by_path, _ = parse_cli(LDMRunConfig, ["--config", str(ROOT / "configs/toy/swissroll.yaml")])
    assert by_name == by_path and by_name.name == "toy_swissroll"


def test_an_unknown_config_name_is_one_line_listing_the_recipes(capsys):
    with pytest.raises(SystemExit) as e:
        parse_cli(LDMRunConfig, ["--config", "fashion_mnist/ldm_k1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == ("error: --config 'fashion_mnist/ldm_k1': no such file, nor a recipe of that "
                                         f"name; recipes: {', '.join(RECIPES)}\n")
    assert "fashion_mnist/ldm_kl" in RECIPES and "toy/swissroll" in RECIPES and len(RECIPES) == 19
    with pytest.raises(SystemExit) as e:  # a .yaml path is a path: its own error, no list
        parse_cli(LDMRunConfig, ["--config", "configs/fashion_mnist/ldm_k1.yaml"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: config file 'configs/fashion_mnist/ldm_k1.yaml' does not exist\n"


def test_no_library_module_or_bench_script_imports_a_command():
    files = [p for p in [*(ROOT / "latentdiff").rglob("*.py"), *(ROOT / "autoencoders").rglob("*.py"),
                         *(ROOT / "bench").rglob("*.py")] if "commands" not in p.relative_to(ROOT).parts]
    importing = [p.relative_to(ROOT).as_posix() for p in files
                 if "latentdiff.commands" in (text := p.read_text(encoding="utf-8")) or "import commands" in text]
    assert files and importing == []
