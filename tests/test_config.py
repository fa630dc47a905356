"""Configuration validation: defaults, and clear errors that name the key and what was expected."""

import pytest
import yaml

from pipeline.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
)


def test_defaults_fill_an_empty_config():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config)
    assert cfg.species == ("Pt", "C", "O")
    assert cfg.ingest.min_distance_a > 0
    assert cfg.regions.adsorbate_species == ("C", "O")


def test_default_config_file_is_valid_and_round_trips():
    with open(DEFAULT_CONFIG_PATH) as fh:
        raw = yaml.safe_load(fh)
    cfg = config_from_dict(raw)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "raw, key, fragment",
    [
        ({"seed": "zero"}, "seed", "is not of type 'integer'"),
        ({"ingest": {"min_distance_a": -0.5}}, "ingest.min_distance_a", "less than or equal to the minimum"),
        ({"regions": {"adsorbate_radius_a": -1.0}}, "regions.adsorbate_radius_a", "minimum"),
        ({"ingest": {"bogus": 1}}, "ingest", "'bogus' was unexpected"),
        ({"bogus_section": {}}, "<top level>", "'bogus_section' was unexpected"),
        ({"data": {"source": "ftp"}}, "data.source", "is not one of"),
        ({"species": ["Pt", "pt"]}, "species.1", "does not match"),
    ],
)
def test_schema_errors_name_the_key(raw, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert f"config key '{key}'" in message
    assert fragment in message


def test_region_species_must_be_known():
    with pytest.raises(ConfigError, match="regions.adsorbate_species"):
        config_from_dict({"species": ["Pt"], "regions": {"adsorbate_species": ["C", "O"]}})


def test_split_fractions_must_leave_a_training_set():
    with pytest.raises(ConfigError, match="validation_fraction"):
        config_from_dict({"ingest": {"validation_fraction": 0.5, "test_fraction": 0.5}})


def test_missing_data_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": {"paths": ["nowhere/*.extxyz"]}}))
    with pytest.raises(ConfigError, match=r"data.paths.*nowhere/\*.extxyz"):
        load_config(path)


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_adaptive_partition_radii_default_to_lf_cutoff_and_keep_lf_away_from_adsorbates():
    cfg = config_from_dict({})
    assert cfg.md.partition.mode == "static"
    assert cfg.md.partition.adaptive.radii(cfg.models.lf.r_max) == (cfg.models.lf.r_max, cfg.models.lf.r_max + 1.5)
    with pytest.raises(ConfigError, match="md.partition.adaptive.inner_a"):
        config_from_dict({"md": {"partition": {"adaptive": {"inner_a": 3.0}}}})
    with pytest.raises(ConfigError, match="outer_a"):
        config_from_dict({"md": {"partition": {"adaptive": {"inner_a": 6.0, "outer_a": 5.5}}}})
    lf_learns_all = config_from_dict({"train": {"lf_data": "all"}, "md": {"partition": {"adaptive": {"inner_a": 3.0}}}})
    assert lf_learns_all.md.partition.adaptive.radii(5.0) == (3.0, 4.5)


def test_adaptive_partition_on_several_mpi_ranks_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="one MPI rank only"):
        config_from_dict({"md": {"partition": {"mode": "adaptive"}, "run": {"mpi_ranks": 2}}})
    assert config_from_dict({"md": {"run": {"mpi_ranks": 2}}}).md.run.mpi_ranks == 2  # static: fine
