"""Torch device and precision from the configuration's names, shared by every stage.

>>> DTYPES["float64"]
torch.float64
>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
"""Config precision names (``train.dtype``, ``md.dtype``, ``analysis.dtype``) -> torch dtypes."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (GPU ``local_rank``) when available, else CPU; ``cuda`` without a GPU raises
    ``RuntimeError``; any other name raises ``ValueError``."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch finds no CUDA device")
    return torch.device("cuda", local_rank)
