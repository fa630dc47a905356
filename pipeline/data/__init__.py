"""Data: reading DFT outputs, validation, region labels, splits and the ingest stage.

Public API (the modules behind it are :mod:`~pipeline.data.readers`, :mod:`~pipeline.data.canonical`,
:mod:`~pipeline.data.validation`, :mod:`~pipeline.data.regions`, :mod:`~pipeline.data.splits`,
:mod:`~pipeline.data.stats` and :mod:`~pipeline.data.ingest`):

- :func:`read_dft` (paths -> canonical ``ase.Atoms`` frames) and :func:`find_dft_files`;
- :func:`ingest` (config -> :class:`IngestResult`) and :func:`write_ingest_outputs`;
- :func:`validate_frames`, :class:`Rejection`;
- :func:`infer_family`, :func:`label_regions`, :data:`FAMILIES`, :data:`ENVIRONMENTS`;
- :func:`assign_splits`, :data:`SPLITS`.

Note that ``pipeline.data.ingest`` is the function; its module is ``pipeline.data.ingest`` in
``sys.modules`` (``from pipeline.data.ingest import write_ingest_outputs`` works as usual).
"""

from pipeline.data.canonical import (
    ENERGY_CONVENTION,
    STRESS_CONVENTION,
    canonical_frame,
)
from pipeline.data.ingest import IngestResult, ingest, write_ingest_outputs
from pipeline.data.readers import FORMATS, DFTReadError, find_dft_files, read_dft
from pipeline.data.regions import (
    ENVIRONMENTS,
    FAMILIES,
    REGIONS,
    family_of,
    infer_family,
    label_regions,
    region_summary,
)
from pipeline.data.splits import SPLITS, assign_splits, group_of
from pipeline.data.stats import statistics_table
from pipeline.data.validation import Rejection, TooManyRejectedError, validate_frames

__all__ = [
    "ENERGY_CONVENTION",
    "ENVIRONMENTS",
    "FAMILIES",
    "FORMATS",
    "REGIONS",
    "SPLITS",
    "STRESS_CONVENTION",
    "DFTReadError",
    "IngestResult",
    "Rejection",
    "TooManyRejectedError",
    "assign_splits",
    "canonical_frame",
    "family_of",
    "find_dft_files",
    "group_of",
    "infer_family",
    "ingest",
    "label_regions",
    "read_dft",
    "region_summary",
    "statistics_table",
    "validate_frames",
    "write_ingest_outputs",
]
