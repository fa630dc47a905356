"""Shared fixtures of the ingestion tests (structures: tests/ingest_structures.py)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
from ingest_structures import family_frames  # tests/ is on the path (pyproject: pythonpath)

from pipeline.config import config_from_dict


@pytest.fixture
def cfg():
    """The default configuration (thresholds as shipped)."""
    return config_from_dict({})


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A directory of extxyz files (one per family) holding :func:`family_frames` (26 frames, 13 groups)."""
    root = tmp_path / "dft"
    root.mkdir()
    frames = family_frames()
    for family in ("bulk", "clean_slab", "slab_co", "gas"):
        chosen = [a for a in frames if a.info["group"].startswith(family)]
        ase.io.write(root / f"{family}.extxyz", chosen, format="extxyz")
    return root
