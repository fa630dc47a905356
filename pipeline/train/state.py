"""The training-state checkpoint: everything needed to resume a training exactly where it stopped.

The training core (:func:`pipeline.train.core.train`) writes it for every training with a state file:
the stages of :mod:`pipeline.train.loop` (models ``hf``, ``lf``) and, when asked, the single models of
:mod:`pipeline.train.single` (model ``model``). The layout and ``kind`` are those of the co-training
state written before the core existed, so such states resume unchanged.

One file, ``<state dir>/training_state.pt``, rewritten atomically (temporary file, fsync,
``os.replace``) after every epoch. It is a ``torch.save`` of plain values, loaded with
``weights_only=True``::

    {"format_version": 2, "kind": "cotraining_state",
     "fingerprint": {...},            # what must match to resume: pair, config sections, species, dataset hash
     "epoch": int,                    # epochs completed
     "finished": bool,                # early-stopped or max_epochs reached
     "models": {"hf": sd, "lf": sd},  # live weights of the trained experts
     "ema": {"hf": sd, "lf": sd},     # torch.optim.swa_utils.AveragedModel state (or {} without EMA)
     "optimizer": sd, "scheduler": sd,
     "best": {"hf": sd, "lf": sd},    # EMA weights of the selected epoch so far (trained experts only)
     "selection": {...},              # smoothed validation history (pipeline.train.selection.Selection)
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]},
     "data_seed": int, "metrics": [{column: value}, ...], "versions": {...}}

A missing file means a fresh start; an unreadable file, another format or a fingerprint that differs
from the current run raises :class:`TrainingStateError` naming the file and what differs (never a
silent restart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import write_atomic
from pipeline.errors import PipelineInputError
from pipeline.models.checkpoint import package_versions

FORMAT_VERSION = 2
KIND = "cotraining_state"
STATE_FILE = "training_state.pt"
_REQUIRED = ("format_version", "kind", "fingerprint", "epoch", "finished", "models", "ema", "optimizer",
             "scheduler", "best", "selection", "rng", "data_seed", "metrics")


class TrainingStateError(PipelineInputError, RuntimeError):
    """A training-state checkpoint is corrupt, of another format, or from a different run."""


def state_path(state_dir: str | Path) -> Path:
    """The state file inside ``state_dir``."""
    return Path(state_dir) / STATE_FILE


def capture_rng() -> dict[str, Any]:
    """Torch CPU (and CUDA) random states."""
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor moved to the CPU and detached (nested dicts and lists)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def save_state(path: str | Path, payload: dict[str, Any]) -> None:
    """Write the training state atomically (adds format, kind and package versions)."""
    path = Path(path)
    full = {"format_version": FORMAT_VERSION, "kind": KIND, "versions": package_versions(), **to_cpu(payload)}
    missing = [k for k in _REQUIRED if k not in full]
    if missing:
        raise ValueError(f"training state lacks {missing}")
    write_atomic(path, lambda tmp: torch.save(full, tmp))


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                out.append(f"{name} ({'only in the checkpoint' if key in saved else 'not in the checkpoint'})")
            else:
                out.extend(_differences(saved[key], current[key], name))
        return out
    return [] if saved == current else [f"{prefix} (checkpoint {saved!r}, now {current!r})"]


def load_state(path: str | Path, fingerprint: dict[str, Any], *, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The saved training state at ``path``, or ``None`` when the file does not exist.

    Raises
    ------
    TrainingStateError
        If the file cannot be read, is not a co-training state of this format, or its fingerprint
        differs from ``fingerprint`` (the differing keys are listed).
    """
    path = Path(path)
    if not path.exists():
        return None
    hint = f"delete {path.parent} to start this training from scratch"
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt or foreign file: torch raises several types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise TrainingStateError(
            f"cannot read the training state {path}: corrupt, truncated or not a torch.save file "
            f"({type(exc).__name__}: {first}); {hint}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise TrainingStateError(f"{path} is not a co-training state checkpoint; {hint}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise TrainingStateError(
            f"{path} has format version {payload.get('format_version')}, this code reads {FORMAT_VERSION}; {hint}"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise TrainingStateError(f"{path} lacks the entries {missing}; {hint}")
    diffs = _differences(payload["fingerprint"], fingerprint)
    if diffs:
        raise TrainingStateError(
            f"the training state {path} belongs to a different run; these differ: {'; '.join(diffs[:8])}"
            f"{' ...' if len(diffs) > 8 else ''}. {hint[0].upper()}{hint[1:]}"
        )
    return payload
