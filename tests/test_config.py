"""Configs: validation errors are one clear line naming the key; overrides are typed; dicts round-trip."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latentdiff.cli import parse_cli
from latentdiff.config import AERunConfig, ConfigError, JointRunConfig, LDMRunConfig, from_dict, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.setps'; did you mean 'train.steps'"):
        load_config(AERunConfig, None, ["train.setps=10"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer, got 'big'"):
        load_config(AERunConfig, None, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match=r"model.attention: expected true or false"):
        load_config(AERunConfig, None, ["model.attention=3"])


def test_out_of_range_and_bad_choice_are_rejected():
    with pytest.raises(ConfigError, match=r"model.latent_channels: 0 is below the minimum 1"):
        load_config(AERunConfig, None, ["model.latent_channels=0"])
    with pytest.raises(ConfigError, match=r"model.kind: 'vea' is not one of .*did you mean 'vae'"):
        load_config(AERunConfig, None, ["model.kind=vea"])


def test_missing_folder_is_rejected_before_work(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root: folder .* does not exist"):
        load_config(AERunConfig, None, [f"data.root={tmp_path / 'nope'}"])


def test_overrides_are_parsed_as_yaml_and_win_over_the_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"name": "x", "train": {"steps": 5, "lr": 1e-3}}))
    cfg = load_config(AERunConfig, f, ["train.steps=7", "model.channel_mults=[1,2]", "train.grad_clip=null"])
    assert cfg.name == "x" and cfg.train.steps == 7 and cfg.train.lr == 1e-3
    assert cfg.model.channel_mults == [1, 2] and cfg.train.grad_clip is None
    assert isinstance(cfg.train.lr, float)
    assert load_config(AERunConfig, None, ["train.lr=1e-4"]).train.lr == 1e-4  # YAML 1.1 reads this as a string


def test_config_round_trips_through_a_plain_dict():
    for cls in (AERunConfig, LDMRunConfig):
        cfg = cls()
        d = to_dict(cfg)
        assert from_dict(cls, yaml.safe_load(yaml.safe_dump(d))) == cfg


def test_cli_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_cli(AERunConfig, ["train.stpes=3"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.steps" in err[0]


def test_every_recipe_in_configs_loads():
    recipes = sorted((ROOT / "configs").rglob("*.yaml"))
    assert recipes, "no recipes found"
    for path in recipes:
        if path.name.startswith("ae"):
            load_config(AERunConfig, path)
        elif path.name.startswith("joint"):  # the stage-two run it starts from need not be trained yet
            load_config(JointRunConfig, path)
        else:  # the autoencoder run a recipe points at need not be trained yet
            load_config(LDMRunConfig, path, ["ae.run=null"])


def test_print_config_shows_the_resolved_config():
    out = subprocess.run([sys.executable, str(ROOT / "train_ae.py"), "--config",
                          str(ROOT / "configs/shapes/ae_kl.yaml"), "train.steps=3", "--print-config"],
                         capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(out)["train"]["steps"] == 3


def test_unknown_dataset_and_dataset_option_are_caught_before_work():
    with pytest.raises(ConfigError, match=r"data.name: unknown dataset 'fashion_mnsit'; did you mean 'fashion_mnist'"):
        load_config(AERunConfig, None, ["data.name=fashion_mnsit"])
    with pytest.raises(ConfigError, match=r"data.options.antialiass: .*did you mean 'data.options.antialias'"):
        load_config(AERunConfig, None, ["data.options={antialiass: 2}"])
