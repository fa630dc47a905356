"""The pipeline's configuration: one YAML file, validated against one JSON Schema, as typed objects.

The schema (``workflow/schemas/config.schema.yaml``) is the single source of truth for keys, types,
bounds and defaults. :func:`load_config` reads a YAML file, fills in defaults, validates it and returns
a :class:`Config`; Snakemake validates the same file with the same schema before any job runs.

>>> cfg = config_from_dict({"seed": 3})
>>> cfg.seed, cfg.ingest.min_distance_a
(3, 0.6)
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, out of range or inconsistent."""


# ----------------------------------------------------------------------------------------------
# Typed sections. Field names and defaults mirror the schema; the schema fills the defaults.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Where the DFT data comes from (``data:``)."""

    source: str = "files"
    paths: tuple[str, ...] = ("resources/dft/pt_co_gpaw.extxyz",)
    format: str | None = None


@dataclass(frozen=True)
class IngestConfig:
    """Frame validation and splitting (``ingest:``). Distances in A, energies in eV/atom."""

    min_distance_a: float = 0.6
    energy_outlier_z: float = 20.0
    energy_outlier_mad_floor_ev: float = 0.02
    max_rejected_fraction: float = 0.1
    validation_fraction: float = 0.1
    test_fraction: float = 0.15


@dataclass(frozen=True)
class RegionConfig:
    """Geometric bulk/complex labelling rule (``regions:``). Distances in A."""

    substrate_species: tuple[str, ...] = ("Pt",)
    adsorbate_species: tuple[str, ...] = ("C", "O")
    adsorbate_radius_a: float = 3.0
    surface_layers_top: int = 1
    surface_layers_bottom: int = 1
    layer_tolerance_a: float = 0.7
    vacuum_min_a: float = 5.0


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    seed: int = 0
    species: tuple[str, ...] = ("Pt", "C", "O")
    torch_threads: int = 1
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    regions: RegionConfig = field(default_factory=RegionConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), loadable again by :func:`config_from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration, as a dict."""
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _validator_filling_defaults(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator that writes each property's ``default`` into the instance first."""
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001 (jsonschema hook)
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    cls = jsonschema.validators.extend(base, {"properties": set_defaults})
    return cls(schema)


def _format_error(err: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return f"config key '{key}': {err.message}; allowed keys here: {', '.join(allowed)}"
    expected = err.schema.get("description", "")
    hint = f" (expected: {expected.strip()})" if expected else ""
    return f"config key '{key}': {err.message}{hint}"


def validate_config_dict(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults into a copy of ``raw`` and validate it against the schema.

    Raises
    ------
    ConfigError
        Listing every violation, each naming the dotted key and what was expected.
    """
    instance = copy.deepcopy(raw) if raw else {}
    if not isinstance(instance, dict):
        raise ConfigError(f"the configuration must be a mapping, got {type(instance).__name__}")
    validator = _validator_filling_defaults(load_schema())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_format_error(e) for e in errors))
    return instance


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a validated dict, recursing into nested dataclasses."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        ftype = hints[f.name]
        if dataclasses.is_dataclass(ftype):
            value = _build(ftype, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def check_semantics(cfg: Config, *, check_files: bool = True) -> None:
    """Checks the schema cannot express: consistency between sections and existence of input files."""
    species = set(cfg.species)
    for key, symbols in (
        ("regions.substrate_species", cfg.regions.substrate_species),
        ("regions.adsorbate_species", cfg.regions.adsorbate_species),
    ):
        unknown = sorted(set(symbols) - species)
        if unknown:
            raise ConfigError(f"config key '{key}': {unknown} not in species {list(cfg.species)}")
    if cfg.ingest.validation_fraction + cfg.ingest.test_fraction >= 1:
        raise ConfigError(
            "config keys 'ingest.validation_fraction' + 'ingest.test_fraction' must be < 1, got "
            f"{cfg.ingest.validation_fraction} + {cfg.ingest.test_fraction}"
        )
    if check_files and cfg.data.source == "files":
        for pattern in cfg.data.paths:
            if not glob.glob(pattern, recursive=True) and not Path(pattern).exists():
                raise ConfigError(
                    f"config key 'data.paths': no file, directory or glob match for {pattern!r} "
                    f"(working directory {Path.cwd()})"
                )


def config_from_dict(raw: dict[str, Any] | None, *, check_files: bool = False) -> Config:
    """Validate ``raw`` (defaults filled) and build the typed :class:`Config`."""
    cfg = _build(Config, validate_config_dict(raw))
    check_semantics(cfg, check_files=check_files)
    return cfg


def load_config(path: str | Path | None = None, *, check_files: bool = True) -> Config:
    """Read, validate and type the YAML configuration at ``path`` (default: config/config.yaml)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    try:
        return config_from_dict(raw, check_files=check_files)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
