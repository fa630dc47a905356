"""Speed of an MD step: full HF, full LF, the mixture at several HF fractions and the adaptive partition, at
several system sizes.

One MD step's force evaluation is timed as the MD stage runs it: energy and forces through
:class:`pipeline.md.evaluator.MixtureEvaluator` (the code the LAMMPS callback calls), with its Verlet
list kept between calls (built during warm-up). The integration itself (LAMMPS, O(N) and cheap) is
not included. Systems: Pt(111) slabs of ``analysis.speed.layers`` layers with CO on top sites
(``co_coverage`` per top-layer Pt) of about each ``n_atoms``; the HF atoms of the mixture are the
``hf_fraction`` of all atoms closest to a CO (rule ``closest_fraction``). The ``adaptive`` row of each size
is the adaptive partition (:class:`~pipeline.md.adaptive.AdaptiveMixturePotential` through
:class:`~pipeline.md.adaptive.AdaptiveEvaluator`, radii and margin of ``md.partition.adaptive``, the inner
radius defaulting to the LF checkpoint's ``r_max``; columns ``r_in_a``, ``r_out_a``, ``margin_a``) on the same
slab and with the same protocol: its ``n_hf`` / ``n_lf`` are the centres each expert evaluated (chunked as in
MD: the atoms with lambda > 0 / lambda < 1, shell atoms in both), ``hf_fraction`` = n_hf / n_atoms, and its
edges (for the ideal bound) those centred on these atoms.

Every case is timed twice: with the chunk sizes of ``md.centres_per_chunk`` (as the MD stage runs it)
and in one pass over all centres (``*_one_pass`` columns: the code before chunking, for a before/after
comparison on the same machine load). Every case is warmed up, then the cases of one size are timed in
turn ``repeats`` times (interleaved, so that a change of machine load hits every case alike) and the
median is reported. Columns (:data:`COLUMNS`): ``steps_per_s`` = 1 / median time, ``atom_steps_per_s`` =
n_atoms x steps_per_s, ``speedup_vs_hf`` = t(full HF) / t(case), and the ideal bound

    ideal_speedup = 1 / (e_H + e_L c_LF / c_HF),   e_L = 1 - e_H when both experts have the same r_max,

with the cost of a step taken as proportional to the edges each expert evaluates (an Allegro expert's
work is per edge, and HF atoms at a surface or next to CO have other neighbour counts than the average):
e_H = E_H / N_H, the edges centred on the case's HF atoms within the HF cutoff over N_H, the edges of
full HF (every centre, HF cutoff); e_L = E_L / N_H, the edges centred on its LF atoms within the LF
cutoff over the same N_H (:func:`expert_edges`, neighbour pairs counted per centre atom); and c_HF =
t(full HF) / N_H, c_LF = t(full LF) / N_L the measured per-edge costs of full HF and full LF on the same
cell. So the bound is t(full HF) / (c_HF E_H + c_LF E_L), the time a mixture without overhead would take;
``fraction_of_ideal`` = speedup_vs_hf / ideal_speedup. ``ideal_speedup_atoms`` is the naive bound with
the HF atom fraction f and per-atom costs t / n_atoms, 1 / (f + (1 - f) c_LF / c_HF), for comparison.

>>> round(ideal_speedup(0.2, c_hf=1.0, c_lf=0.1), 4)
3.5714
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase import Atoms

from pipeline.analysis._common import (
    device_label,
    load_pairs,
    pyplot,
    save_figure,
    write_table,
)
from pipeline.config import Config, MDPartitionConfig, MDSystemConfig
from pipeline.data.neighbors import neighbor_list
from pipeline.devices import DTYPES, resolve_device
from pipeline.md.adaptive import AdaptiveEvaluator, adaptive_mixture
from pipeline.md.evaluator import MixtureEvaluator, SystemEvaluator
from pipeline.md.partition import EXPERTS, HF, partition_atoms
from pipeline.md.potential import MixturePotential
from pipeline.md.system import build_production_cell

log = logging.getLogger(__name__)

COLUMNS = ("device", "threads", "precision", "n_atoms", "hf_fraction", "hf_edge_fraction", "mode", "steps_per_s",
           "atom_steps_per_s", "speedup_vs_hf", "ideal_speedup", "fraction_of_ideal", "ideal_speedup_atoms",
           "step_time_ms", "step_time_ms_one_pass", "speedup_vs_hf_one_pass", "ideal_speedup_one_pass",
           "fraction_of_ideal_one_pass", "centres_per_chunk", "n_hf", "n_edges", "target_hf_fraction", "repeats",
           "n_lf", "r_in_a", "r_out_a", "margin_a")
MODES = ("hf", "lf", "moe", "adaptive")  # the values of the mode column


def ideal_speedup(e_hf: float, *, c_hf: float, c_lf: float, e_lf: float | None = None) -> float:
    """Ideal speedup over full HF, 1 / (e_hf + e_lf c_lf / c_hf), of a mixture whose cost is c_hf per unit of
    HF work and c_lf per unit of LF work.

    Parameters
    ----------
    e_hf, e_lf : float
        HF and LF work of the mixture in units of full HF's work: edges E_H / N_H and E_L / N_H with per-edge
        costs (see the module), or the atom fractions f and 1 - f with per-atom costs. ``e_lf`` defaults to
        ``1 - e_hf`` (same units of work for both experts: equal cutoffs, or atoms).
    c_hf, c_lf : float
        Measured cost (s) per unit of work of full HF and full LF.
    """
    e_lf = 1.0 - e_hf if e_lf is None else e_lf
    return 1.0 / (e_hf + e_lf * c_lf / c_hf)


def centre_edges(atoms: Atoms, centres: Sequence[np.ndarray], r_max: Sequence[float]) -> np.ndarray:
    """Edges each expert evaluates: ordered pairs (i, j), |r_ij| < ``r_max[k]``, centred on a centre i of expert k.

    Parameters
    ----------
    atoms : ase.Atoms
        The cell (periodic images counted as separate neighbours).
    centres : sequence of (n_atoms,) bool arrays
        Each expert's centres (they may overlap: the adaptive partition's shell atoms are centres of both).
    r_max : sequence of float
        Each expert's cutoff, A.

    Returns
    -------
    (n_experts,) int64 array of edge counts.

    >>> from ase.build import bulk
    >>> centre_edges(bulk("Pt", "fcc", a=3.97, cubic=True), [np.ones(4, bool), np.ones(4, bool)], (3.0, 4.5)).tolist()
    [48, 72]
    """
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, max(r_max))
    vectors = atoms.positions[edge_index[1]] + shifts @ atoms.cell.array - atoms.positions[edge_index[0]]
    lengths = np.linalg.norm(vectors, axis=1)  # [n_edges]
    return np.array([np.sum(np.asarray(mask, dtype=bool)[edge_index[0]] & (lengths < r))
                     for mask, r in zip(centres, r_max)], dtype=np.int64)


def expert_edges(atoms: Atoms, expert: np.ndarray, r_max: Sequence[float]) -> np.ndarray:
    """Edges each expert evaluates: ordered pairs (i, j), |r_ij| < ``r_max[k]``, centred on an atom i of expert k.

    Parameters
    ----------
    atoms : ase.Atoms
        The cell (periodic images counted as separate neighbours).
    expert : (n_atoms,) int array
        Expert index of every atom.
    r_max : sequence of float
        Each expert's cutoff, A (as :meth:`pipeline.md.potential.MixturePotential.split_edges` keeps them).

    Returns
    -------
    (n_experts,) int64 array of edge counts.

    >>> from ase.build import bulk
    >>> expert_edges(bulk("Pt", "fcc", a=3.97, cubic=True), np.array([0, 0, 1, 1]), (3.0, 4.5)).tolist()
    [24, 36]
    """
    expert = np.asarray(expert)
    return centre_edges(atoms, [expert == k for k in range(len(r_max))], r_max)


def timing_slab(n_atoms: int, *, layers: int, co_coverage: float, lattice_constant_a: float) -> Atoms:
    """A Pt(111) slab with CO on top sites of about ``n_atoms`` atoms (square n x n surface cell)."""
    n = max(2, round(math.sqrt(n_atoms / layers)))
    n_co = max(1, round(co_coverage * n * n))
    return build_production_cell(MDSystemConfig(surface_size=(n, n), layers=layers, n_co=n_co,
                                                lattice_constant_a=lattice_constant_a))


def time_cases(
    evaluators: Mapping[str, tuple[SystemEvaluator, Atoms]], *, repeats: int, warmup: int
) -> dict[str, float]:
    """Median wall time (s) of one energy + forces evaluation per case (interleaved repeats)."""
    def once(evaluator: SystemEvaluator, atoms: Atoms) -> float:
        sync = evaluator.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(evaluator.device)
        start = time.perf_counter()
        evaluator(atoms.positions, atoms.cell.array, atoms.pbc)
        if sync:
            torch.cuda.synchronize(evaluator.device)
        return time.perf_counter() - start

    for evaluator, atoms in evaluators.values():
        for _ in range(max(warmup, 1)):  # at least one: builds the Verlet list
            once(evaluator, atoms)
    samples: dict[str, list[float]] = {name: [] for name in evaluators}
    for _ in range(repeats):
        for name, (evaluator, atoms) in evaluators.items():
            samples[name].append(once(evaluator, atoms))
    return {name: statistics.median(values) for name, values in samples.items()}


def full_expert_evaluator(cfg: Config, model: torch.nn.Module, name: str, atoms: Atoms, device: torch.device, *,
                          chunked: bool = True) -> MixtureEvaluator:
    """The MD stage's evaluator with ``model`` (expert ``name``) on every atom of ``atoms``: Verlet skin of
    ``md.neighbor_skin_a``, the chunk size of ``md.centres_per_chunk`` for ``name`` (``chunked``) or one pass."""
    return MixtureEvaluator(MixturePotential([model], names=(name,)), numbers=atoms.numbers,
                            expert=np.zeros(len(atoms), dtype=np.int64), skin=cfg.md.neighbor_skin_a, device=device,
                            centres_per_chunk=cfg.md.centres_per_chunk.for_experts((name,)) if chunked else 0)


def speed_rows(cfg: Config, experts: Mapping[str, torch.nn.Module], n_atoms: int, device: torch.device) -> list[dict]:
    """Rows of one system size: full HF, full LF, the mixture at each HF fraction and the adaptive partition."""
    s = cfg.analysis.speed
    atoms = timing_slab(n_atoms, layers=s.layers, co_coverage=s.co_coverage,
                        lattice_constant_a=cfg.analysis.lattice_constant_a)
    n = len(atoms)
    cases: dict[str, tuple[SystemEvaluator, Atoms]] = {}
    meta: dict[str, tuple[str, float, int, int]] = {}  # name -> (mode, target fraction, n_hf, n_lf)
    r_max = tuple(float(experts[name].r_max) for name in EXPERTS)
    full = {name: int(expert_edges(atoms, np.zeros(n, dtype=np.int64), (r,))[0]) for name, r in zip(EXPERTS, r_max)}
    edges = {"hf": (full["hf"], 0), "lf": (0, full["lf"])}  # mode or HF fraction -> (E_H, E_L)
    skin = cfg.md.neighbor_skin_a
    chunks = cfg.md.centres_per_chunk
    for suffix, chunked in (("", True), ("/one_pass", False)):
        for name in EXPERTS:
            cases[name + suffix] = (full_expert_evaluator(cfg, experts[name], name, atoms, device, chunked=chunked),
                                    atoms)
            meta[name + suffix] = (name, 1.0 if name == "hf" else 0.0, n if name == "hf" else 0,
                                   n if name == "lf" else 0)
        mixture = MixturePotential([experts["hf"], experts["lf"]], names=EXPERTS)
        for f in s.hf_fractions:
            expert = partition_atoms(atoms, MDPartitionConfig(rule="closest_fraction", hf_fraction=float(f)),
                                     cfg.regions)
            key = f"moe_{f:g}{suffix}"
            cases[key] = (MixtureEvaluator(mixture, numbers=atoms.numbers, expert=expert, skin=skin, device=device,
                                           centres_per_chunk=chunks.for_experts(EXPERTS) if chunked else 0), atoms)
            n_hf = int(np.sum(expert == HF))
            meta[key] = ("moe", float(f), n_hf, n - n_hf)
            edges[key] = tuple(int(e) for e in expert_edges(atoms, expert, r_max))
        adaptive = adaptive_mixture(experts["hf"], experts["lf"], cfg.md.partition.adaptive,
                                    adsorbate_species=cfg.regions.adsorbate_species)
        cases["adaptive" + suffix] = (AdaptiveEvaluator(
            adaptive, numbers=atoms.numbers, skin=skin, device=device,
            centres_per_chunk=chunks.for_experts(EXPERTS) if chunked else 0), atoms)
    seconds = time_cases(cases, repeats=s.repeats, warmup=s.warmup)
    evaluator = cases["adaptive"][0]  # chunked, as in MD: the centres are the atoms of nonzero weight
    meta["adaptive"] = ("adaptive", float("nan"), evaluator.centres["hf"], evaluator.centres["lf"])
    weights = evaluator.weights
    edges["adaptive"] = tuple(int(e) for e in centre_edges(atoms, [weights > 0, weights < 1], r_max))
    radii = {"r_in_a": evaluator.potential.r_in, "r_out_a": evaluator.potential.r_out,
             "margin_a": evaluator.potential.margin}

    def per_edge(suffix: str) -> dict[str, float]:  # c_HF, c_LF: s per edge of full HF and full LF
        return {"c_hf": seconds["hf" + suffix] / full["hf"], "c_lf": seconds["lf" + suffix] / full["lf"]}

    rows = []
    for key, t in seconds.items():
        if key.endswith("/one_pass"):
            continue
        t1 = seconds[key + "/one_pass"]
        mode, target, n_hf, n_lf = meta[key]
        frac = n_hf / n
        e_hf, e_lf = (e / full["hf"] for e in edges[key])
        ideal = ideal_speedup(e_hf, e_lf=e_lf, **per_edge(""))
        ideal_1 = ideal_speedup(e_hf, e_lf=e_lf, **per_edge("/one_pass"))
        names = EXPERTS if mode in ("moe", "adaptive") else (mode,)
        rows.append({
            "device": device_label(device), "threads": torch.get_num_threads() if device.type == "cpu" else np.nan,
            "precision": s.dtype, "n_atoms": n, "hf_fraction": frac, "hf_edge_fraction": e_hf, "mode": mode,
            "steps_per_s": 1.0 / t, "atom_steps_per_s": n / t, "speedup_vs_hf": seconds["hf"] / t,
            "ideal_speedup": ideal, "fraction_of_ideal": seconds["hf"] / t / ideal,
            "ideal_speedup_atoms": ideal_speedup(frac, e_lf=n_lf / n, c_hf=seconds["hf"] / n, c_lf=seconds["lf"] / n),
            "step_time_ms": 1000.0 * t, "step_time_ms_one_pass": 1000.0 * t1,
            "speedup_vs_hf_one_pass": seconds["hf/one_pass"] / t1, "ideal_speedup_one_pass": ideal_1,
            "fraction_of_ideal_one_pass": seconds["hf/one_pass"] / t1 / ideal_1,
            "centres_per_chunk": "/".join(str(x) for x in chunks.for_experts(names)), "n_hf": n_hf,
            "n_edges": sum(edges[key]), "target_hf_fraction": target, "repeats": s.repeats, "n_lf": n_lf,
            **(radii if mode == "adaptive" else dict.fromkeys(radii, float("nan"))),
        })
        log.info("speed: %d atoms, %s (HF fraction %.3f): %.1f ms per step (one pass: %.1f ms)", n, mode, frac,
                 1000.0 * t, 1000.0 * t1)
    return rows


def speed_table(cfg: Config, *, hf: str | Path, lf: str | Path) -> pd.DataFrame:
    """The speed table (:data:`COLUMNS`) for the experts saved at ``hf`` and ``lf``.

    Parameters
    ----------
    cfg : Config
        Uses ``analysis.speed``, ``analysis.lattice_constant_a``, ``md.neighbor_skin_a``,
        ``md.centres_per_chunk``, ``md.partition.adaptive``, ``regions``, ``species``, ``device``,
        ``torch_threads``.
    hf, lf : paths of the expert checkpoints
    """
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    experts = load_pairs({"timed": {"hf": hf, "lf": lf}}, species=cfg.species, dtype=DTYPES[cfg.analysis.speed.dtype],
                         device=device)["timed"]
    rows = []
    for n_atoms in cfg.analysis.speed.n_atoms:
        rows += speed_rows(cfg, experts, n_atoms, device)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot_speed(table: pd.DataFrame, png: str | Path) -> None:
    """Measured and ideal speedup over full HF against the HF fraction (left); atom-steps/s per mode and
    size (right). The static rows are lines; the adaptive partition (if in the table) is a star at its HF
    centre fraction."""
    plt = pyplot()
    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(11, 4.5))
    for n, rows in table.groupby("n_atoms"):
        adaptive = rows[rows["mode"] == "adaptive"]
        rows = rows[rows["mode"] != "adaptive"].sort_values("hf_fraction")
        (line,) = ax_s.plot(rows["hf_fraction"], rows["speedup_vs_hf"], "o-", label=f"{n} atoms: measured")
        ax_s.plot(rows["hf_fraction"], rows["ideal_speedup"], "--", color=line.get_color(),
                  label=f"{n} atoms: ideal (edges)")
        ax_s.plot(rows["hf_fraction"], rows["ideal_speedup_atoms"], ":", color=line.get_color(),
                  label=f"{n} atoms: naive (atoms)")
        ax_r.plot(rows["hf_fraction"], rows["atom_steps_per_s"], "o-", color=line.get_color(), label=f"{n} atoms")
        if len(adaptive):
            ax_s.plot(adaptive["hf_fraction"], adaptive["speedup_vs_hf"], "*", ms=12, color=line.get_color(),
                      label=f"{n} atoms: adaptive (HF centres)")
            ax_r.plot(adaptive["hf_fraction"], adaptive["atom_steps_per_s"], "*", ms=12, color=line.get_color())
    ax_s.axhline(1.0, color="grey", lw=0.6)
    ax_s.set_xlabel("HF fraction f (0 = full LF, 1 = full HF)")
    ax_s.set_ylabel("speedup over full HF")
    ax_s.set_title("MoE speedup; ideal 1 / (e_H + e_L c_LF / c_HF), per-edge costs", fontsize=9)
    ax_s.legend(fontsize=7)
    ax_r.set_yscale("log")
    ax_r.set_xlabel("HF fraction f")
    ax_r.set_ylabel("throughput (atom-steps/s)")
    first = table.iloc[0]
    ax_r.set_title(f"{first['device']}, {first['precision']}, threads {first['threads']}")
    ax_r.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png)


def write_speed(table: pd.DataFrame, *, csv: str | Path, md: str | Path, png: str | Path) -> None:
    """Write the speed table (CSV + Markdown) and the plot."""
    first = table.iloc[0]
    notes = [
        (f"Device {first['device']}, torch threads {first['threads']}, precision {first['precision']}, one process. "
        "One step = energy + forces of the whole system through the MD stage's mixture evaluator (Verlet list "
        "kept; integration not included); median of "
        f"{first['repeats']} interleaved repeats after warm-up. hf_fraction: the actual HF fraction (1 = full HF, "
        "0 = full LF); speedup_vs_hf = t(full HF) / t. ideal_speedup: the bound for a cost proportional to the "
        "edges each expert evaluates, 1 / (e_H + e_L c_LF / c_HF), with hf_edge_fraction e_H = E_H / N_H (edges "
        "centred on HF atoms within the HF r_max over the edges of full HF), e_L = E_L / N_H (edges centred on LF "
        "atoms within the LF r_max; 1 - e_H for equal cutoffs) and c_HF, c_LF the measured per-edge costs "
        "(time / edges) of full HF and full LF on the same cell; fraction_of_ideal = speedup_vs_hf / "
        "ideal_speedup. ideal_speedup_atoms: the naive bound 1 / (f + (1 - f) c_LF / c_HF) with the HF atom "
        "fraction f and per-atom costs. n_edges: the edges the case evaluates (E_H + E_L). step_time_ms: each "
        "expert's centres evaluated in chunks of centres_per_chunk (hf/lf; md.centres_per_chunk, as in MD); "
        "*_one_pass: the same cases in one forward and backward pass over all centres (before chunking), timed "
        "in the same run, with their own per-edge costs."),
        "On a shared CPU the timings vary with the machine's load; compare rows of one run.",
    ]
    adaptive = table[table["mode"] == "adaptive"]
    if len(adaptive):
        row = adaptive.iloc[0]
        notes.insert(1, (
            f"mode adaptive: the adaptive partition (md.partition.adaptive: r_in {row['r_in_a']:g} A, r_out "
            f"{row['r_out_a']:g} A, margin {row['margin_a']:g} A) on the same slab: n_hf / n_lf are the centres "
            "each expert evaluates in the chunked step (atoms with lambda > 0 / lambda < 1; the switching shell "
            "counts for both), hf_fraction = n_hf / n_atoms, its edges those centred on these centres; its "
            "one-pass step evaluates the centre sets kept with the margin."))
    write_table(table, csv=csv, md=md, title="Speed of the mixture of experts", notes=notes, floatfmt=".4g")
    plot_speed(table, png)
