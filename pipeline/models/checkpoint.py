"""Checkpoints of one Allegro expert: state dict + the config that builds it, never a pickled module.

A checkpoint is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format_version": 1, "kind": "allegro_expert", "config": {...ExpertConfig...},
     "species": ["Pt", "C", "O"], "r_max": 5.0, "dtype": "float32",
     "state_dict": {...}, "versions": {"torch": ..., "e3nn": ..., "pipeline": ...},
     "metadata": {...}}

Writes are atomic (temporary file in the same directory, fsync, ``os.replace``). Loading refuses a
checkpoint whose species or cutoff differ from what the caller expects.
"""

from __future__ import annotations

import dataclasses
import pickle
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import e3nn
import torch

import pipeline
from pipeline.atomic import write_atomic
from pipeline.devices import DTYPES
from pipeline.errors import PipelineInputError
from pipeline.models.allegro import AllegroModel, build_model, expert_config_from_dict

FORMAT_VERSION = 1
KIND = "allegro_expert"
_REQUIRED = ("format_version", "kind", "config", "species", "r_max", "dtype", "state_dict")


class CheckpointError(PipelineInputError, ValueError):
    """A checkpoint is missing, unreadable, of another format, or does not match the caller's data."""


def package_versions() -> dict[str, str]:
    """Versions recorded in checkpoints."""
    return {
        "torch": str(torch.__version__),
        "e3nn": str(e3nn.__version__),
        "pipeline": str(pipeline.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: str | Path, model: AllegroModel, *, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` to ``path`` atomically.

    ``metadata`` must hold only plain values (numbers, strings, lists, dicts, tensors) so that
    the file loads with ``weights_only=True``.
    """
    path = Path(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "config": dataclasses.asdict(model.config),
        "species": list(model.species),
        "r_max": float(model.r_max),
        "dtype": str(model.dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": package_versions(),
        "metadata": dict(metadata or {}),
    }
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The validated checkpoint dict (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
            raise CheckpointError(
                f"cannot read checkpoint {path} with weights_only=True: it holds Python objects other than "
                f"tensors and plain values (not written by save_checkpoint?) {detail}"
            ) from exc
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a torch.save file ({exc})"
        ) from exc
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a torch.save file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not an Allegro expert checkpoint (found kind {found!r})")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload['format_version']}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    return payload


def load_checkpoint(
    path: str | Path,
    *,
    species: Sequence[str] | None = None,
    r_max: float | None = None,
    dtype: torch.dtype | None = None,
    map_location: str | torch.device = "cpu",
) -> AllegroModel:
    """Rebuild the model saved at ``path`` (in eval mode).

    Parameters
    ----------
    species : sequence of str, optional
        Species (in order) the caller's data uses; a different list raises :class:`CheckpointError`.
    r_max : float, optional
        Cutoff (A) the caller's neighbour lists use; a different cutoff raises.
    dtype : torch.dtype, optional
        Build in this dtype instead of the saved one.
    """
    payload = read_checkpoint(path, map_location=map_location)
    saved_species = list(payload["species"])
    if species is not None and list(species) != saved_species:
        raise CheckpointError(
            f"checkpoint {path} was built for species {saved_species}, but the data uses {list(species)} "
            "(same elements in the same order are required)"
        )
    if r_max is not None and abs(float(r_max) - float(payload["r_max"])) > 1e-9:
        raise CheckpointError(f"checkpoint {path} has cutoff r_max = {payload['r_max']} A, but the data uses {r_max} A")
    if payload["dtype"] not in DTYPES:
        raise CheckpointError(f"checkpoint {path} has unsupported dtype {payload['dtype']!r}")
    try:
        config = expert_config_from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from exc
    model = build_model(config, saved_species, dtype=dtype or DTYPES[payload["dtype"]])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config builds: {exc}") from exc
    return model.to(map_location).eval()
