"""Provenance of the frames the active-learning loop adds: the ``info`` keys, and the ids and groups.

Every snapshot of an exploration trajectory carries, in ``atoms.info``:

=====================  ======================================================================
key                    meaning
=====================  ======================================================================
``al_iteration``       int, the loop iteration whose models produced the trajectory
``al_source_run``      str, ``mixture`` (HF/LF by ``md.partition``) or ``hf`` (full HF)
``al_cell``            str, the exploration cell (:data:`pipeline.active.cells.CELLS`)
``al_temperature_k``   float, Langevin target temperature (K)
``al_step``            int, MD step of the snapshot (time = step * ``al_timestep_fs``)
``al_timestep_fs``     float, MD time step (fs)
``al_trajectory``      str, the trajectory (iteration, run, cell, temperature)
``al_score``           float, the selection score (eV/A; set by :mod:`pipeline.active.uncertainty`)
``al_last_good``       bool, True for the last physical state of a trajectory that was stopped
=====================  ======================================================================

and the keys the ingest stage uses: ``family`` (``slab_co`` or ``clean_slab``), ``group`` (the trajectory:
its frames are correlated, so :func:`pipeline.data.splits.assign_splits` keeps them in one split),
``config_type`` (``al_md``), ``structure_id`` (unique: trajectory + step) and, after selection,
``sample_index`` (the labelled chunks are merged in this order). These keys survive labelling
(:func:`pipeline.data.labelling.label_one` copies ``info``) and ingest (extxyz ``info`` is kept).
"""

from __future__ import annotations

AL_KEYS = ("al_iteration", "al_source_run", "al_cell", "al_temperature_k", "al_step", "al_timestep_fs",
           "al_trajectory", "al_score")
"""``info`` keys every added frame carries (see the module docstring)."""
INGEST_KEYS = ("family", "group", "config_type", "structure_id")
"""``info`` keys the ingest and split stages read."""
CONFIG_TYPE = "al_md"


def trajectory_id(iteration: int, run: str, cell: str, temperature_k: float) -> str:
    """Stable name of one exploration trajectory, e.g. ``al-it00-mixture-2x2x4-co-top-600K``.

    >>> trajectory_id(1, "hf", "3x3x4-3co", 900.0)
    'al-it01-hf-3x3x4-3co-900K'
    """
    return f"al-it{int(iteration):02d}-{run}-{cell}-{int(round(temperature_k))}K"


def snapshot_id(trajectory: str, step: int) -> str:
    """``structure_id`` of the snapshot of ``trajectory`` at MD step ``step``."""
    return f"{trajectory}-s{int(step):06d}"
