"""The pipeline's configuration: one YAML file, validated against one JSON Schema, as typed objects.

The schema (``pipeline/config.schema.yaml``, shipped with the package) is the single source of truth for keys, types,
bounds and defaults. :func:`load_config` reads a YAML file, fills in defaults, validates it and returns
a :class:`Config`; Snakemake validates the same file with the same schema before any job runs.

>>> cfg = config_from_dict({"seed": 3})
>>> cfg.seed, cfg.ingest.min_distance_a
(3, 0.6)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline.errors import PipelineInputError
from pipeline.resources import resolve

SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")  # package data
# the checkout's configuration of the default run (absent in an installed wheel)
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


class ConfigError(PipelineInputError, ValueError):
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
    max_force_ev_a: float = 50.0
    energy_outlier_z: float = 20.0
    energy_outlier_mad_floor_ev: float = 0.02
    max_rejected_fraction: float = 0.1
    validation_fraction: float = 0.1
    test_fraction: float = 0.15
    split_seed: int = 0
    hold_out_eos: bool = True
    gas_bond_window_a: float = 0.1


@dataclass(frozen=True)
class RegionConfig:
    """Geometric bulk/complex labelling rule (``regions:``). Distances in A."""

    substrate_species: tuple[str, ...] = ("Pt",)
    adsorbate_species: tuple[str, ...] = ("C", "O")
    adsorbate_radius_a: float = 3.0
    surface_layers_top: int = 1
    surface_layers_bottom: int = 0
    layer_tolerance_a: float = 0.7
    vacuum_min_a: float = 5.0


@dataclass(frozen=True)
class SampleBulkConfig:
    """Bulk fcc Pt structures (``sample.bulk:``). Lengths in A, temperatures in K."""

    eos_n_volumes: int = 11
    eos_volume_range: float = 0.08
    strain_n: int = 70
    strain_max: float = 0.04
    strain_cell_atoms: int = 1
    rattle_n: int = 4
    rattle_supercell_atoms: tuple[int, ...] = (32, 4)
    rattle_stdev_a: float = 0.08
    rattle_volume_range: float = 0.03
    thermal_n_frames: int = 2
    thermal_supercell_atoms: int = 32
    thermal_temperature_k: float = 900.0


@dataclass(frozen=True)
class SampleSlabConfig:
    """Clean Pt(111) slabs (``sample.clean_slab:``). Lengths in A, temperatures in K, times in fs."""

    layers: int = 4
    vacuum_a: float = 6.0
    rattle_n_2x2: int = 8
    rattle_n_3x3: int = 0
    rattle_stdev_a: float = 0.08
    thermal_temperatures_k: tuple[float, ...] = (300.0, 700.0)
    thermal_frames_per_temperature: int = 4
    thermal_equilibration_steps: int = 100
    thermal_interval_steps: int = 25
    thermal_timestep_fs: float = 2.0


@dataclass(frozen=True)
class SampleSlabCOConfig:
    """CO on Pt(111) (``sample.slab_co:``). Lengths in A, angles in degrees."""

    c_o_bond_a: float = 1.16
    height_top_a: float = 1.85
    height_bridge_a: float = 1.50
    height_fcc_a: float = 1.30
    height_hcp_a: float = 1.30
    perturbed_per_site_2x2: int = 3
    half_ml_n_2x2: int = 6
    ideal_sites_3x3: tuple[str, ...] = ("top", "fcc")
    perturbed_n_3x3: int = 0
    approach_sites: tuple[str, ...] = ("top", "fcc")
    approach_offsets_a: tuple[float, ...] = (-0.2, 0.25, 0.6, 1.2, 2.5)
    rattle_stdev_a: float = 0.04
    tilt_max_deg: float = 25.0
    stretch_max_a: float = 0.08
    lateral_max_a: float = 0.25
    close_heights_top_a: tuple[float, ...] = (1.55, 1.40, 1.25)
    close_heights_bridge_a: tuple[float, ...] = (1.0, 0.6)
    close_heights_hollow_a: tuple[float, ...] = (0.8, 0.4, 0.0)
    flipped_heights_top_a: tuple[float, ...] = (2.0, 1.7)
    flipped_heights_hollow_a: tuple[float, ...] = (1.4, 1.0)
    lying_heights_a: tuple[float, ...] = (1.9, 1.4)
    hot_n_2x2: int = 10
    hot_rattle_stdev_a: float = 0.10
    hot_tilt_max_deg: float = 50.0


@dataclass(frozen=True)
class SampleGasConfig:
    """Gas-phase CO in a box (``sample.gas:``). Lengths in A."""

    bond_min_a: float = 0.96
    bond_max_a: float = 1.50
    n_bond_lengths: int = 39
    ideal_bond_a: float = 1.14
    vacuum_a: float = 4.0


@dataclass(frozen=True)
class SampleConfig:
    """Structure sampling for DFT labelling (``sample:``). Lengths in A."""

    lattice_constant_a: float = 3.97
    bulk: SampleBulkConfig = field(default_factory=SampleBulkConfig)
    clean_slab: SampleSlabConfig = field(default_factory=SampleSlabConfig)
    slab_co: SampleSlabCOConfig = field(default_factory=SampleSlabCOConfig)
    gas: SampleGasConfig = field(default_factory=SampleGasConfig)


@dataclass(frozen=True)
class LabelConfig:
    """Labelling of sampled structures (``label:``): GPAW DFT or EMT (not DFT). Energies in eV."""

    calculator: str = "gpaw"
    n_chunks: int = 2
    mode: str = "lcao"
    basis: str = "dzp"
    ecut_ev: float = 400.0
    h_a: float = 0.25
    xc: str = "PBE"
    kpt_density: float = 1.5
    kpt_even: bool = True
    kpts: tuple[int, ...] | None = None
    smearing_ev: float = 0.1
    pt_setup: str = "10"
    maxiter: int = 333
    stress: bool = True


@dataclass(frozen=True)
class LabelConvergenceBase:
    """The base setting of the label convergence ladder (``label_convergence.base``); see
    :mod:`pipeline.data.convergence`. k-point density in points per A^-1, h in A, smearing in eV."""

    kpt_density: float = 4.5
    h_a: float = 0.2
    smearing_ev: float = 0.05
    basis: str = "dzp"


@dataclass(frozen=True)
class LabelConvergenceAxes:
    """The values each axis takes in turn, the others at the base (``label_convergence.axes``)."""

    kpt_density: tuple[float, ...] = (1.5, 3.0, 4.5, 6.0)
    h_a: tuple[float, ...] = (0.25, 0.2, 0.16)
    smearing_ev: tuple[float, ...] = (0.1, 0.05)
    basis: tuple[str, ...] = ("dzp", "tzdp", "pw400", "pw500", "pw600", "pw700", "pw800")


@dataclass(frozen=True)
class LabelConvergenceConfig:
    """Convergence study of the labelling protocol (``label_convergence:``); see :mod:`pipeline.data.convergence`.

    Tolerances: force RMS in meV/A, error of within-family energy differences in meV/atom.
    """

    frames: tuple[str, ...] = (
        "bulk-eos-005",
        "bulk-eos-002",
        "bulk-rattle-4at-001",
        "clean_slab-2x2-ideal",
        "clean_slab-3x3-ideal",
        "slab_co-2x2-q0.25-top-ideal",
        "slab_co-2x2-q0.25-top-rattle-000",
        "slab_co-3x3-q0.111-top-ideal",
        "gas-co-1.140",
        "gas-co-1.187",
    )
    base: LabelConvergenceBase = field(default_factory=LabelConvergenceBase)
    axes: LabelConvergenceAxes = field(default_factory=LabelConvergenceAxes)
    skip: tuple[str, ...] = (
        "bulk-rattle-4at-001:reference",
        "bulk-rattle-4at-001:kpt_density=3",
        "bulk-rattle-4at-001:kpt_density=6",
        "bulk-rattle-4at-001:h_a=*",
        "bulk-rattle-4at-001:smearing_ev=*",
        "bulk-rattle-4at-001:basis=*",
        "bulk-rattle-4at-001:proposed",
        "*3x3*:kpt_density=6",
        "slab_co-2x2-q0.25-top-rattle-000:kpt_density=6",
        "bulk-*:h_a=0.16",
        "*3x3*:h_a=0.16",
        "slab_co-2x2-q0.25-top-rattle-000:h_a=0.16",
        "*3x3*:smearing_ev=0.1",
        "slab_co-2x2-q0.25-top-rattle-000:smearing_ev=0.1",
        "bulk-*:basis=tzdp",
        "*3x3*:basis=tzdp",
        "slab_co-2x2-q0.25-top-rattle-000:basis=tzdp",
        "*3x3*:basis=pw*",
        "slab_co-2x2-q0.25-top-rattle-000:basis=pw*",
        "clean_slab-*:basis=pw400",
        "clean_slab-*:basis=pw500",
        "*slab*:basis=pw800",
        "clean_slab-*:basis=pw700",
    )
    force_rms_tol_mev_a: float = 30.0
    energy_diff_tol_mev_atom: float = 2.0


@dataclass(frozen=True)
class MoEConfig:
    """Routed mixture-of-experts MLPs inside one expert (``models.<preset>.moe``); see
    :mod:`pipeline.models.moe`. Off by default: the expert is dense."""

    enabled: bool = False
    layers: tuple[str, ...] = ("latent", "readout")
    num_experts: int = 4
    top_k: int = 2
    num_shared: int = 1
    router: str = "element"
    expert_type: str = "mlp"
    expert_width_factor: float = 0.5
    router_embedding_dim: int = 8


@dataclass(frozen=True)
class RepulsionConfig:
    """Short-range nuclear repulsion prior added to an expert (``models.<preset>.repulsion``); see
    :mod:`pipeline.models.repulsion`. Distances are fractions of the pair's sum of covalent radii."""

    enabled: bool = True
    inner_fraction: float = 0.35
    outer_fraction: float = 0.55


@dataclass(frozen=True)
class ExpertConfig:
    """Capacity of one Allegro expert (``models.hf`` / ``models.lf``). Lengths in A.

    MLP hidden layers are given as tuples of widths (``()`` = a linear map).
    """

    r_max: float = 5.0
    l_max: int = 2
    parity: bool = True
    num_layers: int = 2
    num_scalar_features: int = 64
    num_tensor_features: int = 32
    num_bessels: int = 8
    envelope_p: int = 6
    two_body_mlp_hidden: tuple[int, ...] = (64,)
    latent_mlp_hidden: tuple[int, ...] = (64,)
    readout_mlp_hidden: tuple[int, ...] = (32,)
    activation: str = "silu"
    avg_num_neighbors: float = 35.0
    moe: MoEConfig = field(default_factory=MoEConfig)
    repulsion: RepulsionConfig = field(default_factory=RepulsionConfig)


def _lf_default() -> ExpertConfig:
    return ExpertConfig(
        l_max=1,
        parity=False,
        num_layers=2,
        num_scalar_features=24,
        num_tensor_features=8,
        two_body_mlp_hidden=(24,),
        latent_mlp_hidden=(24,),
        readout_mlp_hidden=(24,),
    )


@dataclass(frozen=True)
class ModelsConfig:
    """The high-fidelity (``hf``) and low-fidelity (``lf``) expert presets (``models:``)."""

    hf: ExpertConfig = field(default_factory=ExpertConfig)
    lf: ExpertConfig = field(default_factory=_lf_default)


@dataclass(frozen=True)
class TrainCellsConfig:
    """Mixture cells of the agreement terms (``train.cells:``); see :mod:`pipeline.train.cells`. Lengths in A."""

    bulk: int = 48
    bulk_repeat: tuple[int, ...] = (2, 2, 6)
    volume_range: float = 0.08
    uniaxial_max: float = 0.03
    shear_max: float = 0.03
    rattle_max_a: float = 0.1
    slab: int = 24
    slab_min_lateral_a: float = 11.0
    slab_rattle_a: float = 0.05
    validation_fraction: float = 0.25
    per_batch: int = 2


@dataclass(frozen=True)
class TrainConfig:
    """Co-training of the HF and LF experts (``train:``); see :mod:`pipeline.train`.

    Energies in eV, forces in eV/A, stress in eV/A^3, lengths in A; loss weights multiply mean squared
    errors in those units. The independent pair is the same run with ``lambda_energy = lambda_force = 0``.
    """

    dtype: str = "float32"
    max_epochs: int = 200
    lf_max_epochs: int | None = None
    batch_size: int = 8
    optimizer: str = "adam"
    learning_rate: float = 0.003
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    plateau_factor: float = 0.5
    plateau_patience: int = 8
    min_learning_rate: float = 1.0e-5
    grad_clip_norm: float = 10.0
    ema_decay: float = 0.99
    early_stopping_patience: int = 100
    energy_weight: float = 10.0
    force_weight: float = 1.0
    stress_weight: float = 0.0
    huber_delta_energy_ev_atom: float = 0.1
    huber_delta_force_ev_a: float = 1.0
    lf_data: str = "bulk_atoms"
    agreement_mode: str = "anchored"
    lambda_energy: float = 100.0
    lambda_force: float = 40.0
    lambda_mixture: float = 40.0
    agreement_ramp_epochs: int = 60
    selection_window: int = 10
    cells: TrainCellsConfig = field(default_factory=TrainCellsConfig)
    moe_balance_weight: float = 0.01


@dataclass(frozen=True)
class MDSystemConfig:
    """The production cell: Pt(111) slab with CO on top sites (``md.system:``). Lengths in A."""

    surface_size: tuple[int, ...] = (6, 6)
    layers: int = 6
    lattice_constant_a: float = 3.97
    vacuum_a: float = 10.0
    n_co: int = 4
    co_height_a: float = 1.85
    c_o_bond_a: float = 1.15


@dataclass(frozen=True)
class MDAdaptiveConfig:
    """The switching weight of the adaptive partition (``md.partition.adaptive:``); see
    :mod:`pipeline.md.adaptive`. Lengths in A; None = derived (inner: LF r_max, outer: inner + 1.5)."""

    inner_a: float | None = None
    outer_a: float | None = None
    margin_a: float = 0.5

    def radii(self, lf_r_max: float) -> tuple[float, float]:
        """(inner, outer) radii with the derived defaults filled in."""
        inner = float(self.inner_a) if self.inner_a is not None else float(lf_r_max)
        outer = float(self.outer_a) if self.outer_a is not None else inner + 1.5
        return inner, outer


@dataclass(frozen=True)
class MDPartitionConfig:
    """HF/LF assignment (``md.partition:``): a static rule (:mod:`pipeline.md.partition`) or, with ``mode``
    adaptive, a smooth switching weight (:mod:`pipeline.md.adaptive`). Lengths in A."""

    rule: str = "adsorbate_radius"
    radius_a: float = 4.5
    surface_layers: int = 1
    min_height_a: float = 9.0
    indices: tuple[int, ...] = ()
    hf_fraction: float = 0.2
    mode: str = "static"
    adaptive: MDAdaptiveConfig = field(default_factory=MDAdaptiveConfig)


@dataclass(frozen=True)
class MDRunConfig:
    """One LAMMPS run (``md.run:``). Times in fs, temperatures in K, intervals in steps.

    The run is ``equilibration_steps`` of Langevin NVT at ``temperature_k``, then ``steps`` of production
    in ``ensemble`` (step numbers run on through both phases).
    """

    mpi_ranks: int = 1
    ensemble: str = "nve"
    timestep_fs: float = 1.0
    steps: int = 2000
    equilibration_steps: int = 2000
    temperature_k: float = 300.0
    thermostat_damping_fs: float = 100.0
    fixed_bottom_layers: int = 2
    thermo_interval: int = 10
    dump_interval: int = 100
    restart_interval: int = 500
    pressure: bool = False


@dataclass(frozen=True)
class MDSafetyConfig:
    """Blow-up limits (``md.safety:``): distance in A, temperature in K, energy in eV/atom."""

    min_distance_a: float = 0.6
    max_temperature_k: float = 5000.0
    max_energy_change_ev_atom: float = 0.5


@dataclass(frozen=True)
class MDChunkConfig:
    """Centres evaluated per forward/backward pass, per expert (``md.centres_per_chunk:``; 0 = all in one);
    see :class:`pipeline.md.potential.MixturePotential`."""

    hf: int = 128
    lf: int = 512

    def for_experts(self, names: Sequence[str]) -> tuple[int, ...]:
        """Chunk sizes of the experts named ``names`` (``hf`` / ``lf``), in that order."""
        return tuple(int(getattr(self, name)) for name in names)


@dataclass(frozen=True)
class MDConfig:
    """Mixture-of-experts molecular dynamics (``md:``); see :mod:`pipeline.md`."""

    dtype: str = "float64"
    neighbor_skin_a: float = 1.0
    reference_pair: str = "independent"
    full_lf_without_adsorbates: bool = True
    centres_per_chunk: MDChunkConfig = field(default_factory=MDChunkConfig)
    system: MDSystemConfig = field(default_factory=MDSystemConfig)
    partition: MDPartitionConfig = field(default_factory=MDPartitionConfig)
    run: MDRunConfig = field(default_factory=MDRunConfig)
    safety: MDSafetyConfig = field(default_factory=MDSafetyConfig)


@dataclass(frozen=True)
class AnalysisAccuracyConfig:
    """Accuracy on held-out DFT data (``analysis.accuracy:``)."""

    split: str = "test"
    batch_size: int = 16


@dataclass(frozen=True)
class AnalysisEOSConfig:
    """Equation of state of fcc Pt (``analysis.eos:``). Volumes as fractions of the reference volume."""

    n_volumes: int = 11
    volume_range: float = 0.08
    supercell: tuple[int, ...] = (2, 2, 8)


@dataclass(frozen=True)
class AnalysisElasticConfig:
    """Cubic elastic constants of fcc Pt (``analysis.elastic:``). Strains as fractions."""

    strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01)
    dft_set: str | None = "resources/dft/elastic/pt_elastic_gpaw.extxyz"


@dataclass(frozen=True)
class AnalysisInterfaceConfig:
    """HF/LF interface in a split fcc Pt crystal (``analysis.interface:``). Lengths in A."""

    supercell: tuple[int, ...] = (3, 3, 10)
    thermal_rattle_a: float = 0.065
    thermal_samples: int = 3


@dataclass(frozen=True)
class AnalysisSpeedConfig:
    """MD-step timing of full HF, full LF and the mixture (``analysis.speed:``)."""

    n_atoms: tuple[int, ...] = (500, 2000)
    hf_fractions: tuple[float, ...] = (0.1, 0.2, 0.4)
    layers: int = 6
    co_coverage: float = 0.16
    repeats: int = 3
    warmup: int = 1
    dtype: str = "float64"


@dataclass(frozen=True)
class AnalysisAdaptiveConfig:
    """The adaptive-partition table (``analysis.adaptive:``); see :mod:`pipeline.analysis.adaptive`.

    Steps at ``md.run.timestep_fs``; ``bias_k_ev_a2`` in eV/A^2, ``bias_offset_a`` in A, ``bias_direction`` in
    units of the surface cell vectors (a, b), ``friction_per_fs`` in 1/fs.
    """

    seeds: tuple[int, ...] | None = None
    steps: int = 1500
    equilibration_steps: int = 300
    friction_per_fs: float = 0.01
    bias_k_ev_a2: float = 0.1
    bias_offset_a: float = 4.0
    bias_direction: tuple[float, ...] = (1.0, 1.0)
    bias_molecule: int = 0
    speed_n_atoms: int = 2000
    speed_repeats: int = 5
    speed_warmup: int = 2

    def seeds_or(self, fallback: tuple[int, ...]) -> tuple[int, ...]:
        """The seeds, ``fallback`` (``robustness.seeds``) when unset."""
        return tuple(self.seeds) if self.seeds is not None else tuple(fallback)


@dataclass(frozen=True)
class AnalysisConfig:
    """The analysis stage (``analysis:``); see :mod:`pipeline.analysis`. Lengths in A."""

    dtype: str = "float64"
    lattice_constant_a: float = 3.97
    accuracy: AnalysisAccuracyConfig = field(default_factory=AnalysisAccuracyConfig)
    eos: AnalysisEOSConfig = field(default_factory=AnalysisEOSConfig)
    elastic: AnalysisElasticConfig = field(default_factory=AnalysisElasticConfig)
    interface: AnalysisInterfaceConfig = field(default_factory=AnalysisInterfaceConfig)
    speed: AnalysisSpeedConfig = field(default_factory=AnalysisSpeedConfig)
    adaptive: AnalysisAdaptiveConfig = field(default_factory=AnalysisAdaptiveConfig)


@dataclass(frozen=True)
class MoEStudyEMTConfig:
    """The multi-element EMT set of the MoE study (``moe_study.emt:``; labelled by ASE's EMT, NOT DFT).

    Lengths in A. Lattice constants are ASE's reference values, mixed linearly (Vegard) for alloys.
    """

    elements: tuple[str, ...] = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
    n_bulk_alloys: int = 84
    n_surfaces: int = 42
    n_rattled: int = 42
    rattle_stdev_a: float = 0.08
    strain_max: float = 0.03
    validation_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass(frozen=True)
class MoEStudyTeacherCheckConfig:
    """DFT check of the teacher labels (``moe_study.periodic.teacher_check:``); see :mod:`pipeline.data.teacher_check`.

    GPAW settings as in ``label:``: cutoff and smearing in eV, grid spacing in A, k-point density in points per A^-1.
    """

    n_frames: int = 60
    max_atoms: int = 8
    n_chunks: int = 2
    path: str = "resources/moe_study/periodic_check_gpaw.extxyz"
    mode: str = "pw"
    ecut_ev: float = 600.0
    basis: str = "dzp"
    h_a: float = 0.2
    kpt_density: float = 3.0
    smearing_ev: float = 0.1


@dataclass(frozen=True)
class MoEStudyPeriodicConfig:
    """The periodic-table set of the MoE study (``moe_study.periodic:``; labelled by the SevenNet-0 teacher, NOT
    DFT); see :mod:`pipeline.data.periodic_set`. Lengths in A, strains dimensionless."""

    seed: int = 0
    elements: tuple[str, ...] = (
        "Li", "Na", "K", "Be", "Mg", "Ca", "Sr", "Sc", "Ti", "V", "Zn", "Y", "Zr", "Nb", "Mo", "Ru", "Rh", "Pd", "Cd",
        "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Cu", "Ag", "Au", "Al", "Ga", "In", "Sn", "Pb", "B", "Si", "Ge", "Sb",
        "H", "C", "N", "O",
    )
    n_bulk: int = 500
    n_alloys: int = 400
    n_compounds: int = 350
    n_surfaces: int = 250
    max_atoms: int = 32
    rattle_stdev_a: float = 0.05
    strain_max: float = 0.03
    iso_strain_max: float = 0.05
    size_mismatch_max: float = 0.15
    vacuum_a: float = 6.0
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    split: str = "structure"
    path: str = "resources/moe_study/periodic_teacher.extxyz"
    use_shipped: bool = True
    teacher_check: MoEStudyTeacherCheckConfig = field(default_factory=MoEStudyTeacherCheckConfig)


@dataclass(frozen=True)
class MoEStudyStabilityConfig:
    """Stability measures and thresholds of the MoE study (``moe_study.stability:``); see
    :mod:`pipeline.train.stability`. Lengths in A, energies in meV."""

    spike_factor: float = 10.0
    max_loss_spikes: int = 0
    path_frames: int = 8
    path_steps: int = 256
    path_amplitude_a: float = 0.1
    max_path_jump_mev: float = 1.0


@dataclass(frozen=True)
class MoEStudyRoutingConfig:
    """Routing analysis of the MoE study's report (``moe_study.routing_analysis:``); see
    :mod:`pipeline.train.moe_report`."""

    knn: int = 3
    permutations: int = 2000
    seed: int = 0
    alpha: float = 0.05


@dataclass(frozen=True)
class MoEStudyHFConfig:
    """MoE layers in the HF expert on the Pt+CO set (``moe_study.hf_expert:``); see :mod:`pipeline.analysis.moe_hf`.

    The ``models.hf`` preset, dense and as each MoE ``variants`` entry at the dense active parameter count,
    trained with the study's budget for every ``moe_study.seeds`` seed; its cost per atom of an MD step timed on
    a Pt(111)+CO slab of about ``timing_atoms`` atoms (``analysis.speed`` layers, coverage, repeats)."""

    variants: tuple[str, ...] = ("dense", "moe_element_shared")
    timing_atoms: int = 2000


@dataclass(frozen=True)
class RobustnessConfig:
    """Training seeds of the robustness table (``robustness:``); see :mod:`pipeline.analysis.robustness`."""

    seeds: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class MoEStudyConfig:
    """The element-wise MoE routing study (``moe_study:``); see :mod:`pipeline.train.moe_study`."""

    enabled: bool = False
    datasets: tuple[str, ...] = ("pt_co", "emt_alloys")
    variants: tuple[str, ...] = (
        "dense", "moe_element_shared", "moe_element", "moe_configuration_shared", "moe_global_shared",
        "mole_element_shared", "moe_element_shared25", "moe_element_shared75",
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    base_model: str = "lf"
    layers: tuple[str, ...] = ("latent", "readout")
    num_experts: int = 8
    top_k: int = 2
    num_shared: int = 2
    max_epochs: int = 60
    batch_size: int = 8
    learning_rate: float = 0.003
    balance_weight: float = 0.01
    max_train_frames: int = 0
    stability: MoEStudyStabilityConfig = field(default_factory=MoEStudyStabilityConfig)
    routing_analysis: MoEStudyRoutingConfig = field(default_factory=MoEStudyRoutingConfig)
    hf_expert: MoEStudyHFConfig = field(default_factory=MoEStudyHFConfig)
    emt: MoEStudyEMTConfig = field(default_factory=MoEStudyEMTConfig)
    periodic: MoEStudyPeriodicConfig = field(default_factory=MoEStudyPeriodicConfig)


@dataclass(frozen=True)
class ActiveExploreConfig:
    """Exploration MD of the active-learning loop (``active.explore:``); see :mod:`pipeline.active.explore`.
    Times in fs, temperatures in K, lengths in A."""

    cells: tuple[str, ...] = (
        "2x2x4-co-top", "2x2x4-co-fcc", "2x2x5-co-bridge", "2x2x4-2co", "3x3x4-co-top", "3x3x4-co-hcp",
        "3x3x4-3co", "3x3x4-adatom-co", "3x3x5-vacancy-co",
    )
    runs: tuple[str, ...] = ("mixture", "hf")
    temperatures_k: tuple[float, ...] = (300.0, 600.0, 900.0)
    steps: int = 500
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    snapshot_interval: int = 25
    fixed_bottom_layers: int = 1
    vacuum_a: float = 7.0
    min_distance_a: float = 0.8
    max_co_bond_a: float = 1.6
    max_temperature_k: float = 3000.0


@dataclass(frozen=True)
class ActiveSelectConfig:
    """Selection of frames to label (``active.select:``); see :mod:`pipeline.active.select`. Scores in eV/A."""

    top_fraction: float = 0.25
    min_score_ev_a: float = 0.0
    max_frames: int = 24
    chunk_size: int = 2


@dataclass(frozen=True)
class ActiveConfig:
    """The active-learning loop (``active:``; target ``active``, not part of the default run); see
    :mod:`pipeline.active`."""

    iterations: int = 3
    committee_seeds: tuple[int, ...] = (0, 1, 2)
    pair: str = "cotrained"
    seed: int = 0
    dtype: str = "float64"
    batch_size: int = 8
    calibration_bins: int = 5
    ship_dir: str = "results/active/ship"
    explore: ActiveExploreConfig = field(default_factory=ActiveExploreConfig)
    select: ActiveSelectConfig = field(default_factory=ActiveSelectConfig)


@dataclass(frozen=True)
class GeneralisationLearningCurveConfig:
    """The data learning curve (``generalisation.learning_curve:``; target ``data_learning_curve``): the HF
    expert trained on nested, group-complete subsets of the training frames."""

    fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    subset_seed: int = 0


@dataclass(frozen=True)
class GeneralisationConfig:
    """The shipped generalisation set (``generalisation:``); see :mod:`pipeline.data.generalisation`.
    Lengths in A."""

    path: str = "resources/dft/generalisation.extxyz"
    dest: str = "resources/dft"
    seed: int = 0
    kinds: tuple[str, ...] = (
        "thick_slab", "thick_slab_co_top", "thick_slab_co_bridge", "thick_slab_co_hcp", "co_bridge_3x3",
        "co_hcp_3x3", "coverage_2_9", "coverage_3_9", "coverage_3_4", "adatom", "adatom_co", "vacancy",
        "vacancy_co", "step", "step_co", "bulk_vacancy",
    )
    thick_layers: int = 6
    vacancy_layers: int = 5
    step_layers: int = 4
    rattle_stdev_a: float = 0.06
    rattle_adsorbate_stdev_a: float = 0.03
    min_distance_a: float = 1.0
    n_chunks: int = 2
    learning_curve: GeneralisationLearningCurveConfig = field(default_factory=GeneralisationLearningCurveConfig)


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
    models: ModelsConfig = field(default_factory=ModelsConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    label_convergence: LabelConvergenceConfig = field(default_factory=LabelConvergenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    md: MDConfig = field(default_factory=MDConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    moe_study: MoEStudyConfig = field(default_factory=MoEStudyConfig)
    active: ActiveConfig = field(default_factory=ActiveConfig)
    generalisation: GeneralisationConfig = field(default_factory=GeneralisationConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), loadable again by :func:`config_from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text()


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration, as a (fresh) dict."""
    return yaml.safe_load(_schema_text())


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


def _format_error(err: jsonschema.ValidationError, prefix: str = "") -> str:
    key = ".".join([prefix, *map(str, err.absolute_path)] if prefix else map(str, err.absolute_path)) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return f"config key '{key}': {err.message}; allowed keys here: {', '.join(allowed)}"
    expected = err.schema.get("description", "")
    hint = f" (expected: {expected.strip()})" if expected else ""
    return f"config key '{key}': {err.message}{hint}"


def _fill_and_check(schema: dict[str, Any], instance: dict[str, Any], *, what: str, prefix: str = "") -> None:
    """Fill ``schema``'s defaults into ``instance`` in place and raise :class:`ConfigError` listing every
    violation, each key named (dotted, under ``prefix``)."""
    validator = _validator_filling_defaults(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(_format_error(e, prefix) for e in errors))


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
    _fill_and_check(load_schema(), instance, what="configuration")
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
    for name, expert in (("hf", cfg.models.hf), ("lf", cfg.models.lf)):
        rep = expert.repulsion
        if rep.enabled and not rep.inner_fraction < rep.outer_fraction:
            raise ConfigError(
                f"config keys 'models.{name}.repulsion.inner_fraction' ({rep.inner_fraction}) must be smaller "
                f"than 'models.{name}.repulsion.outer_fraction' ({rep.outer_fraction})"
            )
    for key, cells in (("analysis.eos.supercell", cfg.analysis.eos.supercell),
                       ("analysis.interface.supercell", cfg.analysis.interface.supercell)):
        if cells[2] % 2:
            raise ConfigError(f"config key '{key}': the third repeat must be even (HF and LF halves), got {list(cells)}")
    if cfg.md.partition.mode == "adaptive" and cfg.md.run.mpi_ranks > 1:
        raise ConfigError(f"config keys 'md.partition.mode' adaptive and 'md.run.mpi_ranks' ({cfg.md.run.mpi_ranks}): "
                          "the adaptive partition runs on one MPI rank only (its switching weight depends on "
                          "adsorbate atoms up to outer_a away, beyond the per-rank ghost scheme); set mpi_ranks 1")
    inner, outer = cfg.md.partition.adaptive.radii(cfg.models.lf.r_max)
    if not outer > inner:
        raise ConfigError(f"config keys 'md.partition.adaptive.outer_a' ({outer}) must be larger than 'inner_a' ({inner})")
    if inner < cfg.models.lf.r_max and cfg.train.lf_data == "bulk_atoms":
        raise ConfigError(f"config key 'md.partition.adaptive.inner_a' ({inner}) must be >= models.lf.r_max "
                          f"({cfg.models.lf.r_max}): the LF expert never saw C or O, so no atom it evaluates may "
                          "have an adsorbate atom within its cutoff (train.lf_data: all lifts this)")
    study = cfg.moe_study
    if study.top_k + (study.num_shared if "moe_element" in study.variants else 0) > study.num_experts:
        raise ConfigError(f"config keys 'moe_study.top_k' ({study.top_k}) + 'num_shared' ({study.num_shared}): the "
                          f"variants route that many experts per atom (moe_element routes all of them) but "
                          f"'moe_study.num_experts' is {study.num_experts}")
    if "dense" not in study.hf_expert.variants:
        raise ConfigError(f"config key 'moe_study.hf_expert.variants' {list(study.hf_expert.variants)}: dense must be "
                          "one of them (the reference of the accuracy and cost ratios)")
    strains = cfg.analysis.elastic.strains
    if sum(s > 0 for s in strains) < 2 or sum(s < 0 for s in strains) < 2:
        raise ConfigError(f"config key 'analysis.elastic.strains': needs >= 2 positive and >= 2 negative strains "
                          f"(zero is added), got {list(strains)}")
    if check_files and cfg.data.source == "files":
        for pattern in map(resolve, cfg.data.paths):
            if not glob.glob(pattern, recursive=True) and not Path(pattern).exists():
                raise ConfigError(
                    f"config key 'data.paths': no file, directory or glob match for {pattern!r} "
                    f"(working directory {Path.cwd()})"
                )


def expert_config(values: dict[str, Any], *, where: str = "expert") -> ExpertConfig:
    """An :class:`ExpertConfig` from a plain dict, through the schema's expert definition (the one that
    ``models.hf`` and ``models.lf`` use): missing keys take the schema's defaults (hf's), lists become
    tuples, and every unknown key or bad value raises :class:`ConfigError` naming ``where.KEY``.

    >>> expert_config({"l_max": 1, "num_layers": 1}).num_scalar_features
    64
    """
    schema = load_schema()
    instance = json.loads(json.dumps(dict(values)))  # a copy with tuples as lists, as YAML gives them
    _fill_and_check({**schema["$defs"]["expert"], "$defs": schema["$defs"]}, instance,
                    what=f"{where} configuration", prefix=where)
    return _build(ExpertConfig, instance)


def config_from_dict(raw: dict[str, Any] | None, *, check_files: bool = False) -> Config:
    """Validate ``raw`` (defaults filled) and build the typed :class:`Config`."""
    cfg = _build(Config, validate_config_dict(raw))
    check_semantics(cfg, check_files=check_files)
    return cfg


def load_config(path: str | Path | None = None, *, check_files: bool = True) -> Config:
    """Read, validate and type the YAML configuration at ``path``; without a path, the schema's defaults.

    The defaults need no file, so ``load_config()`` works wherever the package is installed; the
    checkout's ``config/config.yaml`` (:data:`DEFAULT_CONFIG_PATH`, the default run of the workflow) holds
    only what differs from them. Relative paths in the configuration are relative to the working
    directory; see :mod:`pipeline.resources` for ``resources/...`` outside the checkout.
    """
    if path is None:
        return config_from_dict({}, check_files=check_files)
    path = Path(path)
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
