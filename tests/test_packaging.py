"""The package beyond the checkout: one source of configuration defaults, package data, shipped files."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
import yaml
from setuptools import find_packages

from pipeline.config import (
    DEFAULT_CONFIG_PATH,
    SCHEMA_PATH,
    Config,
    ConfigError,
    config_from_dict,
    expert_config,
    load_config,
    load_schema,
)
from pipeline.resources import resolve

REPO = Path(__file__).resolve().parents[1]


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_typed_defaults_equal_the_schema_defaults():
    # the dataclasses keep defaults for direct construction; this proves they are the schema's
    assert Config() == config_from_dict({})
    assert load_config() == config_from_dict({})


def test_the_default_config_file_holds_only_what_differs_from_the_defaults():
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    defaults = _leaves(config_from_dict({}).to_dict())
    same = [key for key, value in _leaves(raw).items() if defaults.get(key) == value]
    assert not same, f"config/config.yaml repeats defaults: {same}"


def test_hf_and_lf_share_one_expert_definition():
    models = load_schema()["properties"]["models"]["properties"]
    assert models["hf"]["$ref"] == "#/$defs/expert"
    assert {"$ref": "#/$defs/expert"} in models["lf"]["allOf"]
    cfg = config_from_dict({"models": {"lf": {"r_max": 4.0}}})
    assert cfg.models.lf.r_max == 4.0 and cfg.models.lf.l_max == 1  # lf's own default kept
    assert dataclasses.replace(cfg.models.lf, r_max=5.0) == config_from_dict({}).models.lf
    # checkpoints rebuild their expert config through the same builder
    assert expert_config(dataclasses.asdict(cfg.models.hf)) == cfg.models.hf
    with pytest.raises(ConfigError, match="checkpoint.l_max"):
        expert_config({"l_max": 9}, where="checkpoint")


def test_pyproject_lists_every_subpackage_and_ships_the_schema_and_resources():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(project["packages"]) == set(find_packages(str(REPO), include=["pipeline*"])) | {"moe_mlip_resources"}
    assert project["package-dir"]["moe_mlip_resources"] == "resources"
    assert SCHEMA_PATH.parent == REPO / "pipeline" and SCHEMA_PATH.name in project["package-data"]["pipeline"]


def test_resources_paths_fall_back_to_the_installed_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = resolve("resources/dft/pt_co_gpaw.extxyz")
    assert Path(path).is_file() and Path(path).is_absolute()
    assert resolve("resources/dft/none.extxyz") == "resources/dft/none.extxyz"
    (tmp_path / "resources" / "dft").mkdir(parents=True)
    (tmp_path / "resources" / "dft" / "pt_co_gpaw.extxyz").write_text("")
    assert resolve("resources/dft/pt_co_gpaw.extxyz") == "resources/dft/pt_co_gpaw.extxyz"  # the user's own first


def test_load_config_checks_the_default_data_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(check_files=True)
    assert cfg.data.paths == ("resources/dft/pt_co_gpaw.extxyz",)
    with pytest.raises(ConfigError, match="data.paths"):
        config_from_dict({"data": {"paths": ["mine/*.extxyz"]}}, check_files=True)
