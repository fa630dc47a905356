"""Structure sampling for DFT labelling: bulk fcc Pt, clean Pt(111) slabs, CO on Pt(111), gas-phase CO.

Every structure is an unlabelled :class:`ase.Atoms` whose ``info`` holds

- ``family``: one of :data:`FAMILIES` (``bulk``, ``clean_slab``, ``slab_co``, ``gas``);
- ``group``: frames derived from one parent structure or one trajectory share a group, so that the
  train/test split keeps them together;
- ``config_type``: how the frame was made (``eos``, ``strain``, ``rattle``, ``thermal``, ``ideal``,
  ``top``, ``bridge``, ``fcc``, ``hcp``, ``half_ml``, ``approach``, ``close``, ``flipped``, ``lying``,
  ``hot``, ``co_gas``);
- ``structure_id``: unique and stable for a given configuration;
- ``sample_index``: position in the sampled list (the merged labelled set keeps this order);
- ``ideal``: True for the unperturbed reference geometries (EOS points, ideal slabs, ideal CO, ideal gas);
- for CO structures also ``site``, ``coverage_ml``, ``perturbation`` and, for the approach series,
  ``height_offset_a``.

The sampling is deterministic for a seed: each structure (each thermal trajectory) draws from its own
generator seeded by ``(seed, crc32(structure id))``, so changing any count leaves every other structure
unchanged and its cached label valid. Pt-only
thermal snapshots come from short Langevin runs with ASE's EMT; CO-containing structures are only
rattled and displaced (EMT's CO chemistry is wrong).
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from pipeline.config import (
    Config,
    LabelConfig,
    SampleBulkConfig,
    SampleConfig,
    SampleGasConfig,
    SampleSlabCOConfig,
    SampleSlabConfig,
)
from pipeline.data.labelling import kpoints_for

log = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("bulk", "clean_slab", "slab_co", "gas")
SITES: tuple[str, ...] = ("top", "bridge", "fcc", "hcp")
_ASE_SITE = {"top": "ontop", "bridge": "bridge", "fcc": "fcc", "hcp": "hcp"}
# Pairs of sites for 1/2 ML (two CO on a 2x2 cell), cycled.
_HALF_ML_PAIRS: tuple[tuple[str, str], ...] = (
    ("top", "top"),
    ("top", "fcc"),
    ("fcc", "hcp"),
    ("bridge", "bridge"),
    ("top", "hcp"),
    ("fcc", "fcc"),
)


def _rng(seed: int, key: str) -> np.random.Generator:
    """The random generator of one structure (or one trajectory), seeded by ``seed`` and its id.

    Each structure draws from its own stream, so changing the counts of any family or config type
    leaves every other structure unchanged (and its cached label valid).
    """
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _tag(
    atoms: Atoms, *, family: str, group: str, config_type: str, structure_id: str, ideal: bool = False, **extra
) -> Atoms:
    """Write the sampling metadata into ``atoms.info`` and return ``atoms``."""
    _drop_build_info(atoms)
    if family not in FAMILIES:
        raise ValueError(f"structure {structure_id}: unknown family {family!r}; expected one of {FAMILIES}")
    atoms.info.update(
        family=family, group=group, config_type=config_type, structure_id=structure_id, ideal=bool(ideal)
    )
    atoms.info.update(extra)
    return atoms


# ----------------------------------------------------------------------------------------------
# bulk
# ----------------------------------------------------------------------------------------------


def _bulk_cell(a: float, n_atoms: int) -> Atoms:
    """An ideal fcc Pt cell of ``n_atoms`` atoms (1, 8, 27: primitive repeats; 4, 32: cubic repeats)."""
    if n_atoms in (1, 8, 27):
        rep = round(n_atoms ** (1 / 3))
        return bulk("Pt", "fcc", a=a).repeat(rep)
    if n_atoms in (4, 32):
        rep = 1 if n_atoms == 4 else 2
        return bulk("Pt", "fcc", a=a, cubic=True).repeat(rep)
    raise ValueError(f"bulk cell size {n_atoms} atoms is not one of 1, 4, 8, 27, 32")


def _emt_snapshots(
    atoms: Atoms,
    *,
    temperature_k: float,
    n_frames: int,
    equilibration_steps: int,
    interval_steps: int,
    timestep_fs: float,
    rng: np.random.Generator,
) -> list[Atoms]:
    """Snapshots of a Langevin trajectory with ASE's EMT (Pt-only systems).

    Returns ``n_frames`` copies taken every ``interval_steps`` steps after ``equilibration_steps``.
    """
    md_atoms = atoms.copy()
    md_atoms.calc = EMT()
    MaxwellBoltzmannDistribution(md_atoms, temperature_K=temperature_k, rng=rng)
    dyn = Langevin(
        md_atoms, timestep_fs * units.fs, temperature_K=temperature_k, friction=0.02, fixcm=False, rng=rng
    )
    dyn.run(equilibration_steps)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval_steps)
        snap = Atoms(md_atoms.get_chemical_symbols(), positions=md_atoms.get_positions(),
                     cell=md_atoms.cell, pbc=md_atoms.pbc)
        snap.wrap()
        frames.append(snap)
    return frames


def sample_bulk(cfg: SampleBulkConfig, a: float, seed: int, *, md_timestep_fs: float) -> list[Atoms]:
    """Bulk fcc Pt: EOS series, strained/sheared cells, rattled supercells, thermal snapshots."""
    out: list[Atoms] = []
    if cfg.eos_n_volumes:
        if cfg.eos_n_volumes < 5:
            raise ValueError(f"sample.bulk.eos_n_volumes must be 0 or >= 5, got {cfg.eos_n_volumes}")
        for i, f in enumerate(np.linspace(1 - cfg.eos_volume_range, 1 + cfg.eos_volume_range, cfg.eos_n_volumes)):
            at = bulk("Pt", "fcc", a=a * f ** (1 / 3))
            out.append(_tag(at, family="bulk", group="bulk-eos", config_type="eos",
                            structure_id=f"bulk-eos-{i:03d}", ideal=True, volume_factor=float(f)))
    for i in range(cfg.strain_n):
        at = _bulk_cell(a, cfg.strain_cell_atoms)
        rng = _rng(seed, f"bulk-strain-{i:03d}")
        eps = rng.uniform(-cfg.strain_max, cfg.strain_max, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        at.set_cell(at.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        out.append(_tag(at, family="bulk", group=f"bulk-strain-{i:03d}", config_type="strain",
                        structure_id=f"bulk-strain-{i:03d}"))
    for i in range(cfg.rattle_n):
        n = cfg.rattle_supercell_atoms[i % len(cfg.rattle_supercell_atoms)]
        at = _bulk_cell(a, n)
        rng = _rng(seed, f"bulk-rattle-{n}at-{i:03d}")
        f = rng.uniform(1 - cfg.rattle_volume_range, 1 + cfg.rattle_volume_range)
        at.set_cell(at.cell.array * f ** (1 / 3), scale_atoms=True)
        at.positions += rng.normal(0.0, cfg.rattle_stdev_a, size=at.positions.shape)
        at.wrap()
        out.append(_tag(at, family="bulk", group=f"bulk-rattle-{i:03d}", config_type="rattle",
                        structure_id=f"bulk-rattle-{n}at-{i:03d}"))
    if cfg.thermal_n_frames:
        parent = _bulk_cell(a, cfg.thermal_supercell_atoms)
        t = int(round(cfg.thermal_temperature_k))
        snaps = _emt_snapshots(parent, temperature_k=cfg.thermal_temperature_k, n_frames=cfg.thermal_n_frames,
                               equilibration_steps=100, interval_steps=25, timestep_fs=md_timestep_fs,
                               rng=_rng(seed, f"bulk-thermal-{t}K"))
        for i, at in enumerate(snaps):
            out.append(_tag(at, family="bulk", group=f"bulk-thermal-{t}K", config_type="thermal",
                            structure_id=f"bulk-thermal-{t}K-{i:03d}", temperature_k=float(cfg.thermal_temperature_k)))
    return out


# ----------------------------------------------------------------------------------------------
# clean slabs
# ----------------------------------------------------------------------------------------------


def make_slab(a: float, size: int, layers: int, vacuum_a: float) -> Atoms:
    """An ideal Pt(111) ``size x size x layers`` slab, pbc (True, True, False), ``vacuum_a`` on each side."""
    slab = fcc111("Pt", (size, size, layers), a=a, vacuum=vacuum_a, periodic=False)
    slab.pbc = (True, True, False)
    return slab


def _drop_build_info(atoms: Atoms) -> Atoms:
    """Remove ase.build's ``adsorbate_info`` (a dict extxyz cannot store)."""
    atoms.info.pop("adsorbate_info", None)
    return atoms


def sample_clean_slabs(cfg: SampleSlabConfig, a: float, seed: int) -> list[Atoms]:
    """Clean Pt(111): ideal 2x2 and 3x3 references, rattled slabs, EMT thermal snapshots."""
    out: list[Atoms] = []
    for size in (2, 3):
        at = make_slab(a, size, cfg.layers, cfg.vacuum_a)
        out.append(_tag(at, family="clean_slab", group=f"slab-{size}x{size}-ideal", config_type="ideal",
                        structure_id=f"clean_slab-{size}x{size}-ideal", ideal=True, slab_size=size))
    for size, n in ((2, cfg.rattle_n_2x2), (3, cfg.rattle_n_3x3)):
        for i in range(n):
            at = make_slab(a, size, cfg.layers, cfg.vacuum_a)
            rng = _rng(seed, f"clean_slab-{size}x{size}-rattle-{i:03d}")
            at.positions += rng.normal(0.0, cfg.rattle_stdev_a, size=at.positions.shape)
            out.append(_tag(at, family="clean_slab", group=f"slab-{size}x{size}-rattle-{i:03d}",
                            config_type="rattle", structure_id=f"clean_slab-{size}x{size}-rattle-{i:03d}",
                            slab_size=size))
    for temp in cfg.thermal_temperatures_k:
        if not cfg.thermal_frames_per_temperature:
            break
        parent = make_slab(a, 2, cfg.layers, cfg.vacuum_a)
        rng = _rng(seed, f"clean_slab-2x2-thermal-{int(round(temp))}K")
        snaps = _emt_snapshots(parent, temperature_k=temp, n_frames=cfg.thermal_frames_per_temperature,
                               equilibration_steps=cfg.thermal_equilibration_steps,
                               interval_steps=cfg.thermal_interval_steps, timestep_fs=cfg.thermal_timestep_fs,
                               rng=rng)
        t = int(round(temp))
        for i, at in enumerate(snaps):
            out.append(_tag(at, family="clean_slab", group=f"slab-2x2-thermal-{t}K", config_type="thermal",
                            structure_id=f"clean_slab-2x2-thermal-{t}K-{i:03d}", slab_size=2,
                            temperature_k=float(temp)))
    return out


# ----------------------------------------------------------------------------------------------
# CO on Pt(111)
# ----------------------------------------------------------------------------------------------


def _site_height(cfg: SampleSlabCOConfig, site: str) -> float:
    return {"top": cfg.height_top_a, "bridge": cfg.height_bridge_a, "fcc": cfg.height_fcc_a,
            "hcp": cfg.height_hcp_a}[site]


def make_slab_co(
    a: float,
    size: int,
    layers: int,
    vacuum_a: float,
    placements: Sequence[tuple[str, float, tuple[float, float]]],
    bond_a: float,
) -> Atoms:
    """A Pt(111) slab with upright CO molecules.

    Parameters
    ----------
    placements
        One ``(site, C height above the top layer in A, in-plane offset (dx, dy) in A)`` per CO. The
        offset moves the CO from the site of the first surface cell to another one (for 1/2 ML).
    bond_a
        C-O bond length (A).

    The cell is re-centred along z so that there are ``vacuum_a`` A of vacuum below the slab and above
    the highest atom.
    """
    slab = make_slab(a, size, layers, vacuum_a)
    for site, height, offset in placements:
        co = Atoms("CO", positions=[(0.0, 0.0, 0.0), (0.0, 0.0, bond_a)])
        add_adsorbate(slab, co, height, _ASE_SITE[site], offset=None, mol_index=0)
        slab.positions[-2:, :2] += np.asarray(offset, dtype=float)
    slab.center(vacuum=vacuum_a, axis=2)
    slab.pbc = (True, True, False)
    return slab


def _perturb_co(atoms: Atoms, cfg: SampleSlabCOConfig, rng: np.random.Generator, kind: str) -> None:
    """Tilt, stretch or shift every CO of ``atoms`` (in place), then rattle every atom.

    ``kind`` is ``rattle`` (rattle only), ``tilt``, ``stretch``, ``shift`` or ``mixed`` (all three).
    """
    c_idx = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "C"]
    for ic in c_idx:
        io = ic + 1
        c, o = atoms.positions[ic].copy(), atoms.positions[io].copy()
        axis = o - c
        length = np.linalg.norm(axis)
        direction = axis / length
        if kind in ("tilt", "mixed"):
            theta = np.radians(rng.uniform(0.3, 1.0) * cfg.tilt_max_deg)
            phi = rng.uniform(0, 2 * np.pi)
            direction = np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
        if kind in ("stretch", "mixed"):
            length += rng.uniform(-1.0, 1.0) * cfg.stretch_max_a
        if kind in ("shift", "mixed"):
            shift = rng.uniform(-1.0, 1.0, size=2) * cfg.lateral_max_a
            c[:2] += shift
        atoms.positions[ic] = c
        atoms.positions[io] = c + length * direction
    atoms.positions += rng.normal(0.0, cfg.rattle_stdev_a, size=atoms.positions.shape)


_PERTURBATIONS = ("rattle", "tilt", "stretch", "shift", "mixed")


def sample_slab_co(cfg: SampleSlabCOConfig, slab_cfg: SampleSlabConfig, a: float, seed: int) -> list[Atoms]:
    """CO on Pt(111): ideal and perturbed top/bridge/fcc/hcp at 1/4, 1/2 and 1/9 ML; approach series."""
    out: list[Atoms] = []
    layers, vac, bond = slab_cfg.layers, slab_cfg.vacuum_a, cfg.c_o_bond_a

    def build(size, placements):
        return make_slab_co(a, size, layers, vac, placements, bond)

    # 1/4 ML on 2x2: ideal + perturbed per site
    for site in SITES:
        h = _site_height(cfg, site)
        group = f"slab_co-2x2-q0.25-{site}"
        at = build(2, [(site, h, (0.0, 0.0))])
        out.append(_tag(at, family="slab_co", group=group, config_type=site, ideal=True,
                        structure_id=f"slab_co-2x2-q0.25-{site}-ideal", site=site, coverage_ml=0.25,
                        slab_size=2, perturbation="none"))
        for i in range(cfg.perturbed_per_site_2x2):
            kind = _PERTURBATIONS[i % len(_PERTURBATIONS)]
            at = build(2, [(site, h, (0.0, 0.0))])
            sid = f"slab_co-2x2-q0.25-{site}-{kind}-{i:03d}"
            _perturb_co(at, cfg, _rng(seed, sid), kind)
            out.append(_tag(at, family="slab_co", group=group, config_type=site,
                            structure_id=sid, site=site,
                            coverage_ml=0.25, slab_size=2, perturbation=kind))
    # 1/2 ML on 2x2: two CO, the second one shifted by one surface lattice vector a1
    a_nn = a / np.sqrt(2.0)
    for i in range(cfg.half_ml_n_2x2):
        s1, s2 = _HALF_ML_PAIRS[i % len(_HALF_ML_PAIRS)]
        placements = [(s1, _site_height(cfg, s1), (0.0, 0.0)), (s2, _site_height(cfg, s2), (a_nn, 0.0))]
        at = build(2, placements)
        kind = ("rattle", "mixed", "tilt")[i % 3]
        sid = f"slab_co-2x2-q0.5-{s1}-{s2}-{kind}-{i:03d}"
        _perturb_co(at, cfg, _rng(seed, sid), kind)
        out.append(_tag(at, family="slab_co", group=f"slab_co-2x2-q0.5-{s1}-{s2}", config_type="half_ml",
                        structure_id=sid, site=f"{s1}+{s2}",
                        coverage_ml=0.5, slab_size=2, perturbation=kind))
    # 1/9 ML on 3x3
    for site in cfg.ideal_sites_3x3:
        at = build(3, [(site, _site_height(cfg, site), (0.0, 0.0))])
        out.append(_tag(at, family="slab_co", group=f"slab_co-3x3-q0.111-{site}", config_type=site, ideal=True,
                        structure_id=f"slab_co-3x3-q0.111-{site}-ideal", site=site, coverage_ml=1 / 9,
                        slab_size=3, perturbation="none"))
    for i in range(cfg.perturbed_n_3x3):
        site = SITES[i % len(SITES)]
        kind = ("mixed", "tilt", "stretch", "shift")[(i // len(SITES)) % 4]
        at = build(3, [(site, _site_height(cfg, site), (0.0, 0.0))])
        sid = f"slab_co-3x3-q0.111-{site}-{kind}-{i:03d}"
        _perturb_co(at, cfg, _rng(seed, sid), kind)
        out.append(_tag(at, family="slab_co", group=f"slab_co-3x3-q0.111-{site}", config_type=site,
                        structure_id=sid, site=site,
                        coverage_ml=1 / 9, slab_size=3, perturbation=kind))
    # approach / desorption series: upright CO at several heights (offset 0 is the ideal structure)
    for site in cfg.approach_sites:
        h = _site_height(cfg, site)
        for dz in cfg.approach_offsets_a:
            at = build(2, [(site, h + dz, (0.0, 0.0))])
            out.append(_tag(at, family="slab_co", group=f"slab_co-2x2-approach-{site}", config_type="approach",
                            structure_id=f"slab_co-2x2-approach-{site}-{dz:+.2f}", site=site, coverage_ml=0.25,
                            slab_size=2, perturbation="height", height_offset_a=float(dz)))
    out += _sample_close_contacts(cfg, build, seed, vacuum_a=vac)
    return out


def _flip_co(atoms: Atoms) -> None:
    """Turn the last CO of ``atoms`` O-down: swap the two atoms' species (positions stay)."""
    symbols = atoms.get_chemical_symbols()
    symbols[-2], symbols[-1] = symbols[-1], symbols[-2]
    atoms.set_chemical_symbols(symbols)


def _lay_co_flat(atoms: Atoms, vacuum_a: float) -> None:
    """Turn the last (upright) CO of ``atoms`` flat: axis along x, centred over the C position."""
    c = atoms.positions[-2].copy()
    bond = float(np.linalg.norm(atoms.positions[-1] - c))
    atoms.positions[-2] = c - [bond / 2, 0.0, 0.0]
    atoms.positions[-1] = c + [bond / 2, 0.0, 0.0]
    atoms.center(vacuum=vacuum_a, axis=2)


def _sample_close_contacts(cfg: SampleSlabCOConfig, build, seed: int, *, vacuum_a: float) -> list[Atoms]:
    """Structures an MD run can reach but equilibrium sampling misses, on the 2x2 slab at 1/4 ML.

    ``close``: upright CO pushed into the surface (C-Pt down to ~1.25 A, C in the plane of the top layer
    at the hollows); ``flipped``: O-down CO; ``lying``: CO flat on the surface; ``hot``: strongly tilted,
    stretched, shifted CO on a strongly rattled slab. Every frame is rattled, so no force is zero by symmetry.
    """
    out: list[Atoms] = []

    def add(at: Atoms, *, group: str, config_type: str, sid: str, site: str, perturbation: str, **info) -> None:
        rng = _rng(seed, sid)
        at.positions += rng.normal(0.0, cfg.rattle_stdev_a, size=at.positions.shape)
        out.append(_tag(at, family="slab_co", group=group, config_type=config_type, structure_id=sid, site=site,
                        coverage_ml=0.25, slab_size=2, perturbation=perturbation, **info))

    series = [("top", h) for h in cfg.close_heights_top_a] + [("bridge", h) for h in cfg.close_heights_bridge_a]
    series += [(site, h) for site in ("fcc", "hcp") for h in cfg.close_heights_hollow_a]
    for site, h in series:
        add(build(2, [(site, h, (0.0, 0.0))]), group=f"slab_co-2x2-close-{site}", config_type="close",
            sid=f"slab_co-2x2-close-{site}-{h:+.2f}", site=site, perturbation="height", c_height_a=float(h))
    for site, heights in (("top", cfg.flipped_heights_top_a), ("fcc", cfg.flipped_heights_hollow_a)):
        for h in heights:
            at = build(2, [(site, h, (0.0, 0.0))])
            _flip_co(at)
            add(at, group="slab_co-2x2-flipped", config_type="flipped", sid=f"slab_co-2x2-flipped-{site}-{h:+.2f}",
                site=site, perturbation="flipped", o_height_a=float(h))
    for site in ("top", "fcc"):
        for h in cfg.lying_heights_a:
            at = build(2, [(site, h, (0.0, 0.0))])
            _lay_co_flat(at, vacuum_a)
            add(at, group="slab_co-2x2-lying", config_type="lying", sid=f"slab_co-2x2-lying-{site}-{h:+.2f}",
                site=site, perturbation="lying", c_height_a=float(h))
    hot = dataclasses.replace(cfg, tilt_max_deg=cfg.hot_tilt_max_deg, rattle_stdev_a=cfg.hot_rattle_stdev_a,
                              stretch_max_a=1.5 * cfg.stretch_max_a, lateral_max_a=2.0 * cfg.lateral_max_a)
    for i in range(cfg.hot_n_2x2):
        sid = f"slab_co-2x2-hot-{i:03d}"
        rng = _rng(seed, sid)
        site = SITES[int(rng.integers(len(SITES)))]
        at = build(2, [(site, _site_height(cfg, site), (0.0, 0.0))])
        _perturb_co(at, hot, rng, "mixed")
        out.append(_tag(at, family="slab_co", group=sid, config_type="hot", structure_id=sid, site=site,
                        coverage_ml=0.25, slab_size=2, perturbation="hot"))
    return out


# ----------------------------------------------------------------------------------------------
# gas
# ----------------------------------------------------------------------------------------------


def make_gas_co(bond_a: float, vacuum_a: float) -> Atoms:
    """A CO molecule along z with ``vacuum_a`` A of vacuum on every side; pbc False."""
    at = Atoms("CO", positions=[(0.0, 0.0, 0.0), (0.0, 0.0, bond_a)])
    at.center(vacuum=vacuum_a)
    at.pbc = False
    return at


def sample_gas(cfg: SampleGasConfig) -> list[Atoms]:
    """Gas-phase CO at each bond length (the ideal reference bond is always included)."""
    if cfg.bond_max_a < cfg.bond_min_a:
        raise ValueError(f"sample.gas.bond_max_a ({cfg.bond_max_a}) < bond_min_a ({cfg.bond_min_a})")
    grid = np.linspace(cfg.bond_min_a, cfg.bond_max_a, cfg.n_bond_lengths) if cfg.n_bond_lengths else []
    lengths = sorted({round(float(x), 4) for x in grid} | {round(float(cfg.ideal_bond_a), 4)})
    out = []
    for d in lengths:
        at = make_gas_co(d, cfg.vacuum_a)
        ideal = bool(np.isclose(d, cfg.ideal_bond_a))
        out.append(_tag(at, family="gas", group="gas-co", config_type="co_gas", ideal=ideal,
                        structure_id=f"gas-co-{d:.3f}", bond_a=d))
    return out


# ----------------------------------------------------------------------------------------------
# all families, chunks
# ----------------------------------------------------------------------------------------------


def sample_structures(cfg: Config) -> list[Atoms]:
    """All sampled structures of every family, in a fixed order, deterministic for ``cfg.seed``."""
    s: SampleConfig = cfg.sample
    a = s.lattice_constant_a
    frames = (
        sample_bulk(s.bulk, a, cfg.seed, md_timestep_fs=s.clean_slab.thermal_timestep_fs)
        + sample_clean_slabs(s.clean_slab, a, cfg.seed)
        + sample_slab_co(s.slab_co, s.clean_slab, a, cfg.seed)
        + sample_gas(s.gas)
    )
    ids = [f.info["structure_id"] for f in frames]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate structure ids in the sampled set: {dupes}")
    for i, f in enumerate(frames):
        f.info["sample_index"] = i
    return frames


def estimated_cost(atoms: Atoms, label: LabelConfig) -> float:
    """Rough wall time (s) of one GPAW LCAO single point, used only to balance the chunks.

    A power law fitted to single points measured on a 2-core machine (LCAO dzp, h = 0.25 A):
    ``t = 0.157 * N**1.10 * nk**0.90 * V**0.34`` with N atoms, nk = half the Monkhorst-Pack points
    (time reversal) and V the cell volume in A^3.
    """
    k = kpoints_for(atoms, label)
    nk = max(1.0, float(np.prod(k)) / 2.0)
    return 0.157 * len(atoms) ** 1.10 * nk**0.90 * abs(atoms.cell.volume) ** 0.34


def split_chunks(frames: Sequence[Atoms], n_chunks: int, label: LabelConfig) -> list[list[Atoms]]:
    """Split ``frames`` into ``n_chunks`` lists of similar estimated cost (greedy, deterministic).

    Each chunk keeps the sampled order.
    """
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    loads = [0.0] * n_chunks
    members: list[list[int]] = [[] for _ in range(n_chunks)]
    costs = [estimated_cost(f, label) for f in frames]
    order = sorted(range(len(frames)), key=lambda i: (-costs[i], i))
    for i in order:
        k = min(range(n_chunks), key=lambda j: (loads[j], j))
        loads[k] += costs[i]
        members[k].append(i)
    return [[frames[i] for i in sorted(m)] for m in members]


def write_sample_chunks(cfg: Config, outputs: Sequence[str | Path]) -> list[list[Atoms]]:
    """Sample every structure and write ``len(outputs)`` chunk files (extxyz, unlabelled).

    Raises
    ------
    ValueError
        If the number of outputs differs from ``label.n_chunks``.
    """
    if len(outputs) != cfg.label.n_chunks:
        raise ValueError(
            f"sample: got {len(outputs)} output files but label.n_chunks is {cfg.label.n_chunks}"
        )
    frames = sample_structures(cfg)
    chunks = split_chunks(frames, len(outputs), cfg.label)
    for path, chunk in zip(outputs, chunks):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        write(tmp, chunk, format="extxyz")
        tmp.replace(path)
        log.info("wrote %d structures to %s", len(chunk), path)
    return chunks
