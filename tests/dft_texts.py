"""Minimal but valid DFT output texts (VASP OUTCAR / vasprun.xml, QE pw.x, GPAW text), written from
labelled ``ase.Atoms`` so a test knows exactly what a reader must return.

Each writer takes frames (all with the same species in the same order) whose calculator holds
``free_energy`` (eV), ``energy`` (eV, the zero-smearing value), ``forces`` (eV/A) and, optionally,
``stress`` (eV/A^3, ASE Voigt order and sign). Only the lines the ASE readers need are written, in the
layout the codes print them.
"""

from __future__ import annotations

from itertools import groupby

import numpy as np
from ase import Atoms
from ase.io.espresso import (
    units as qe_units,  # QE's CODATA-2006 units, as ASE's reader uses
)
from ase.stress import voigt_6_to_full_3x3_stress
from ase.units import GPa

KBAR = 0.1 * GPa  # eV/A^3 per kbar


def _results(atoms: Atoms) -> tuple[float, float, np.ndarray, np.ndarray | None]:
    r = atoms.calc.results
    return r["free_energy"], r["energy"], np.asarray(r["forces"]), r.get("stress")


def _species_blocks(atoms: Atoms) -> list[tuple[str, int]]:
    return [(s, len(list(g))) for s, g in groupby(atoms.get_chemical_symbols())]


def outcar_text(frames: list[Atoms]) -> str:
    """A VASP OUTCAR with one ionic step per frame."""
    blocks = _species_blocks(frames[0])
    head = [" vasp.6.4.2 20Jul23 (build Jan 01 2024) complex parallel", ""]
    head += [f" POTCAR:    PAW_PBE {s} 06Sep2000" for s, _ in blocks] * 2
    head += [
        "   ISPIN  =      1    spin polarized calculation?",
        "   ions per type =    " + "  ".join(f"{n:3d}" for _, n in blocks),
        " Dimension of arrays:",
        "   k-points           NKPTS =      1   k-points in BZ     NKDIM =      1"
        "   number of bands    NBANDS=     24",
        "",
        " k-points in reciprocal lattice and weights: KPOINTS",
        "   0.00000000  0.00000000  0.00000000       1.000",
        "",
    ]
    body = []
    for step, atoms in enumerate(frames, start=1):
        free, zero, forces, stress = _results(atoms)
        rule = "-" * 39
        body.append(f"{rule} Iteration{step:7d}(   1)  {rule}")
        body.append("")
        body.append("      direct lattice vectors                 reciprocal lattice vectors")
        inv = np.linalg.inv(atoms.cell.array).T
        for a, b in zip(atoms.cell.array, inv):
            body.append("    " + "".join(f"{x:13.9f}" for x in a) + "  " + "".join(f"{x:13.9f}" for x in b))
        body.append("")
        if stress is not None:
            xx, yy, zz, yz, xz, xy = -np.asarray(stress) / KBAR
            body.append("  FORCE on cell =-STRESS in cart. coord.  units (eV):")
            body.append("  Direction    XX          YY          ZZ          XY          YZ          ZX")
            body.append("  in kB  " + "".join(f"{x:12.5f}" for x in (xx, yy, zz, xy, yz, xz)))
            body.append("")
        body.append(" POSITION                                       TOTAL-FORCE (eV/Angst)")
        body.append(" -----------------------------------------------------------------------------------")
        for p, f in zip(atoms.positions, forces):
            body.append("  " + "".join(f"{x:13.5f}" for x in p) + "   " + "".join(f"{x:14.6f}" for x in f))
        body.append(" -----------------------------------------------------------------------------------")
        body.append("")
        body.append("  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)")
        body.append("  ---------------------------------------------------")
        body.append(f"  free  energy   TOTEN  = {free:20.8f} eV")
        body.append("")
        body.append(f"  energy  without entropy= {zero + 0.001:18.8f}  energy(sigma->0) = {zero:18.8f}")
        body.append("")
    return "\n".join(head + body) + "\n"


def _varray(name: str, rows: np.ndarray, indent: str = "  ") -> str:
    lines = [f'{indent}<varray name="{name}" >']
    lines += [f"{indent} <v>" + "".join(f" {x:16.8f}" for x in row) + " </v>" for row in rows]
    return "\n".join(lines + [f"{indent}</varray>"])


def _energy_block(free: float, zero: float, indent: str) -> str:
    return (f'{indent}<energy>\n{indent} <i name="e_fr_energy"> {free:16.8f} </i>\n'
            f'{indent} <i name="e_wo_entrp"> {zero + 0.001:16.8f} </i>\n'
            f'{indent} <i name="e_0_energy"> {zero:16.8f} </i>\n{indent}</energy>')


def vasprun_text(frames: list[Atoms]) -> str:
    """A vasprun.xml with one <calculation> per frame."""
    first = frames[0]
    symbols = first.get_chemical_symbols()
    types = [s for s, _ in _species_blocks(first)]
    rc = "\n".join(f"    <rc><c>{s:2s}</c><c>{types.index(s) + 1:4d}</c></rc>" for s in symbols)
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        "<modeling>",
        ' <generator>\n  <i name="program" type="string">vasp </i>\n'
        '  <i name="version" type="string">6.4.2 </i>\n </generator>',
        ' <parameters>\n  <separator name="electronic" >\n   <i name="ENCUT">    400.00000000</i>\n'
        '  </separator>\n </parameters>',
        ' <kpoints>\n  <varray name="kpointlist" >\n'
        '   <v>       0.00000000       0.00000000       0.00000000 </v>\n  </varray>\n'
        '  <varray name="weights" >\n   <v>       1.00000000 </v>\n  </varray>\n </kpoints>',
        f" <atominfo>\n  <atoms>{len(first):8d} </atoms>\n  <types>{len(types):8d} </types>\n"
        '  <array name="atoms" >\n   <dimension dim="1">ion</dimension>\n'
        '   <dimension dim="2">field</dimension>\n'
        '   <field type="string">element</field>\n   <field type="int">atomtype</field>\n'
        f"   <set>\n{rc}\n   </set>\n  </array>\n </atominfo>",
        ' <structure name="initialpos" >\n  <crystal>\n' + _varray("basis", first.cell.array, "   ")
        + "\n  </crystal>\n" + _varray("positions", first.get_scaled_positions(wrap=False))
        + "\n </structure>",
    ]
    for atoms in frames:
        free, zero, forces, stress = _results(atoms)
        calc = [" <calculation>", "  <scstep>", _energy_block(free, zero, "   "), "  </scstep>",
                "  <structure>", "   <crystal>", _varray("basis", atoms.cell.array, "    "), "   </crystal>",
                _varray("positions", atoms.get_scaled_positions(wrap=False), "   "), "  </structure>",
                _varray("forces", forces)]
        if stress is not None:
            calc.append(_varray("stress", -voigt_6_to_full_3x3_stress(np.asarray(stress)) / KBAR))
        calc += [_energy_block(free, zero, "  "), " </calculation>"]
        parts.append("\n".join(calc))
    parts.append("</modeling>")
    return "\n".join(parts) + "\n"


def espresso_text(frames: list[Atoms]) -> str:
    """A pw.x relaxation output: the first frame at the start, later ones as ATOMIC_POSITIONS steps.

    QE prints the Mermin free energy as ``!    total energy``; ``energy`` of the frames is ignored.
    """
    ry, bohr = qe_units["Ry"], qe_units["Bohr"]
    first = frames[0]
    alat = float(np.linalg.norm(first.cell.array[0]))
    lines = [
        "",
        "     Program PWSCF v.7.2 starts on  1Jan2026 at 12: 0: 0 ",
        "",
        "     bravais-lattice index     =            0",
        f"     lattice parameter (alat)  = {alat / bohr:12.4f}  a.u.",
        f"     number of atoms/cell      = {len(first):12d}",
        f"     number of atomic types    = {len(set(first.numbers)):12d}",
        "",
        f"     celldm(1)= {alat / bohr:12.8f}  celldm(2)=   0.000000  celldm(3)=   0.000000",
        "",
        "     crystal axes: (cart. coord. in units of alat)",
    ]
    for k, a in enumerate(first.cell.array / alat, start=1):
        lines.append(f"               a({k}) = (" + "".join(f"{x:12.8f}" for x in a) + " )  ")
    lines += ["", "   Cartesian axes", "", "     site n.     atom                  positions (alat units)"]
    for k, (s, p) in enumerate(zip(first.get_chemical_symbols(), first.positions / alat), start=1):
        xyz = "".join(f"{x:13.9f}" for x in p)
        lines.append(f"    {k:4d}           {s:2s}  tau({k:4d}) = ({xyz}  )")
    for step, atoms in enumerate(frames):
        free, _, forces, stress = _results(atoms)
        if step > 0:
            lines += ["", "ATOMIC_POSITIONS (angstrom)"]
            for s, p in zip(atoms.get_chemical_symbols(), atoms.positions):
                lines.append(f"{s:2s}  " + "".join(f"{x:16.10f}" for x in p))
        lines += ["", f"!    total energy              = {free / ry:17.8f} Ry", "",
                  "     Forces acting on atoms (cartesian axes, Ry/au):", ""]
        for k, f in enumerate(forces / (ry / bohr), start=1):
            lines.append(f"     atom {k:4d} type  1   force = " + "".join(f"{x:14.8f}" for x in f))
        if stress is not None:
            s3 = -voigt_6_to_full_3x3_stress(np.asarray(stress)) / (ry / bohr**3)
            lines += ["", "     total   stress  (Ry/bohr**3)                   (kbar)     P=        0.00"]
            kbar = "      0.00      0.00      0.00"  # the kbar columns are not read
            lines += ["  " + "".join(f"{x:13.8f}" for x in row) + kbar for row in s3]
        lines.append("")
    return "\n".join(lines) + "\n"


def gpaw_classic_text(frames: list[Atoms]) -> str:
    """GPAW text output in the classic layout (``Positions:`` / ``Unit cell:``), read by ASE's gpaw-out."""
    lines = ["", "  ___ ___ ___ _ _ _  ", " |   |   |_  | | | | ", " | | | | | . | | | | ",
             " |__ |  _|___|_____|  21.1.0", " |___|_|             ", ""]
    for atoms in frames:
        free, zero, forces, _ = _results(atoms)
        lines += ["Reference energy: -1000.000000", "", "Positions:"]
        for k, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions)):
            xyz = "".join(f"{x:12.6f}" for x in p)
            lines.append(f" {k:3d} {s:2s} {xyz}    ( 0.0000,  0.0000,  0.0000)")
        lines += ["", "Unit cell:", "           periodic     x           y           z      points  spacing"]
        for k, (a, pbc) in enumerate(zip(atoms.cell.array, atoms.pbc), start=1):
            lines.append(f"  {k}. axis:    {'yes' if pbc else 'no ':3s}" + "".join(f"{x:12.6f}" for x in a)
                         + "    24     0.2000")
        lines += ["", "Energy contributions relative to reference atoms: (reference = -1000.000000)", "",
                  "Kinetic:        +10.000000", f"Entropy (-ST):   {free - zero:+.6f}",
                  "--------------------------", f"Free energy:    {free:+.6f}",
                  f"Extrapolated:   {zero:+.6f}",
                  "", "Forces in eV/Ang:"]
        for k, (s, f) in enumerate(zip(atoms.get_chemical_symbols(), forces)):
            lines.append(f" {k:3d} {s:2s} " + "".join(f"{x:11.5f}" for x in f))
        lines.append("")
    return "\n".join(lines) + "\n"


def gpaw_tabular_text(frames: list[Atoms], *, echo_first: bool = True) -> str:
    """GPAW text output in the tabular layout of recent versions (read with GPAW's log parser).

    With ``echo_first`` the first geometry is printed twice, once without results, as GPAW does when
    it initialises before the first calculation.
    """
    lines = ["  __  _  _", " | _ |_)|_||  |", " |__||  | ||/\\| - 26.7.0", "", "units:  Angstrom and eV", ""]

    def geometry(atoms: Atoms) -> list[str]:
        out = ["Atoms  # Å, Bohr magnetons",
               "|   | symbol |        x |        y |        z |    initial magnetic moments |",
               "|---|--------|----------|----------|----------|-----------------------------|"]
        for k, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions)):
            xyz = " | ".join(f"{x:.6f}" for x in p)
            out.append(f"| {k} | {s:>6s} | {xyz} | ( 0.0000,  0.0000,  0.0000) |")
        out += ["", "", "Unit cell  # Å",
                "| periodic |        x |        y |        z |  lengths |    angles |",
                "|----------|----------|----------|----------|----------|-----------|"]
        for a, pbc in zip(atoms.cell.array, atoms.pbc):
            out.append(f"| {'yes' if pbc else 'no':>8s} | " + " | ".join(f"{x:.6f}" for x in a)
                       + f" | {np.linalg.norm(a):.6f} | 90.000000 |")
        return out + ["", ""]

    for step, atoms in enumerate(frames):
        free, zero, forces, stress = _results(atoms)
        if step == 0 and echo_first:
            lines += geometry(atoms) + ["Reference energy: -1000.000000  # eV", ""]
        lines += geometry(atoms)
        lines += ["Converged in 8 steps",
                  "Energy contributions relative to reference atoms: (reference = -1000.0)", "",
                  "Energy contributions:", "  Kinetic:          10.000000",
                  f"  Entropy:          {free - zero:.6f}",
                  "  ----------------------------", f"  Free energy:      {free:.6f}",
                  f"  Extrapolated:     {zero:.6f}", "", "Forces  # eV/Ang",
                  "|       x |       y |        z |",
                  "|---------|---------|----------|"]
        for k, (s, f) in enumerate(zip(atoms.get_chemical_symbols(), forces)):
            lines.append("| " + " | ".join(f"{x:.5f}" for x in f) + f" |  # {s:4s} {k}")
        lines += ["", ""]
        if stress is not None:
            lines += ["Stress tensor  # eV/Ang^3", "|         x |         y |         z |",
                      "|-----------|-----------|-----------|"]
            for row in voigt_6_to_full_3x3_stress(np.asarray(stress)):
                lines.append("| " + " | ".join(f"{x:.6f}" for x in row) + " |")
            lines += [""]
    return "\n".join(lines) + "\n"
