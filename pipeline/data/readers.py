"""Find and read DFT outputs through ASE, returning canonical frames.

Recognised file names (:data:`NAME_RULES`, matched case-sensitively on the file name) and the reader
each gets:

==========================  ==============  ==================================================
name                        format          ASE reader
==========================  ==============  ==================================================
``*.extxyz``, ``*.xyz``     extxyz          ``ase.io.read(format="extxyz")``
``*.db``                    db              ``ase.db.connect`` (keeps the rows' key-value pairs)
``OUTCAR*``                 vasp-out        ``ase.io.read(format="vasp-out")``
``vasprun*.xml``            vasp-xml        ``ase.io.read(format="vasp-xml")``
``*.pwo``                   espresso-out    ``ase.io.read(format="espresso-out")``
``*.out``, ``*.txt``        sniffed         Quantum ESPRESSO (``Program PWSCF``) or GPAW (banner)
==========================  ==============  ==================================================

GPAW text output comes in two layouts: the classic one (``Positions:`` / ``Unit cell:``), read by
ASE's ``gpaw-out``, and the tabular one of recent GPAW (``Atoms  # ...`` / ``Unit cell  # ...``),
read by GPAW's own log parser (the one behind GPAW's ASE plugin ``gpaw-log``, which would drop the
free energy and the stress; needs GPAW installed, the ``dft`` extra). Both are the configuration
format ``gpaw-out``. Frames of the tabular layout that only echo the geometry
before a calculation (no results, same geometry as the next frame) are skipped.

A directory is searched recursively and a glob expanded; there only recognised names are read (hidden
files and ``.out``/``.txt`` files that are neither QE nor GPAW output are skipped with a log line). A
file named explicitly must be recognisable; a file that cannot be parsed raises :class:`DFTReadError`
naming it.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm import tqdm

from pipeline.data.canonical import canonical_frame
from pipeline.errors import PipelineInputError

log = logging.getLogger(__name__)

#: Formats of the configuration key ``data.format``.
FORMATS = ("extxyz", "db", "vasp-out", "vasp-xml", "espresso-out", "gpaw-out")
SNIFF = "sniff"
NAME_RULES: tuple[tuple[str, str], ...] = (
    ("*.extxyz", "extxyz"),
    ("*.xyz", "extxyz"),
    ("*.db", "db"),
    ("OUTCAR*", "vasp-out"),
    ("vasprun*.xml", "vasp-xml"),
    ("*.pwo", "espresso-out"),
    ("*.out", SNIFF),
    ("*.txt", SNIFF),
)
SNIFF_BYTES = 65536
_QE_SIGNATURE = re.compile(r"Program PWSCF")
_GPAW_SIGNATURES = (
    re.compile(r"\|__ \|  _\|___\|_____\|"),  # classic banner
    re.compile(r"\|__\|\|  \| \|\|/\\\|"),  # banner of recent versions
    re.compile(r"^\s*gpaw:\s+\S", re.MULTILINE),  # the Paths block
)
_GPAW_TABULAR = re.compile(r"^(Unit cell|Atoms)\s+#", re.MULTILINE)
#: Blocks of the tabular GPAW log that are read (``gpaw.io.log_file_reader.parse`` keys).
_GPAW_LOG_KEYS = {"atoms", "unit_cell", "energy_contributions", "forces", "stress_tensor"}


class DFTReadError(PipelineInputError, ValueError):
    """A DFT file cannot be found, recognised or parsed; the message names the file."""


def _head(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(SNIFF_BYTES).decode("utf-8", errors="replace")


def sniff_text_output(path: str | Path) -> str | None:
    """``espresso-out`` or ``gpaw-out`` from the first 64 KiB of a text file, or None if neither."""
    head = _head(Path(path))
    if _QE_SIGNATURE.search(head):
        return "espresso-out"
    if any(sig.search(head) for sig in _GPAW_SIGNATURES):
        return "gpaw-out"
    return None


def format_from_name(path: str | Path) -> str | None:
    """The format a file's name says (``sniff`` for ``.out``/``.txt``), or None if not recognised."""
    name = Path(path).name
    for pattern, fmt in NAME_RULES:
        if fnmatch.fnmatchcase(name, pattern):
            return fmt
    return None


def detect_format(path: str | Path) -> str | None:
    """The configuration format of ``path`` from its name, sniffing text outputs; None if unknown."""
    fmt = format_from_name(path)
    return sniff_text_output(path) if fmt == SNIFF else fmt


def _candidates(entry: str) -> tuple[list[Path], str]:
    """Files of one entry (sorted, hidden ones left out) and its kind: ``file``, ``dir`` or ``glob``."""
    path = Path(entry)
    if path.is_file():
        return [path], "file"
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file()]
        visible = [p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        return sorted(visible), "dir"
    found = [Path(p) for p in glob.glob(entry, recursive=True) if Path(p).is_file()]
    return sorted(p for p in found if not p.name.startswith(".")), "glob"


def find_dft_files(paths: Iterable[str | Path], format: str | None = None) -> list[tuple[Path, str]]:
    """Expand files, directories and globs into ``(file, format)`` pairs, deterministic order.

    Parameters
    ----------
    paths : iterable of str or Path
        Files, directories (searched recursively) or glob patterns (``**`` allowed).
    format : str, optional
        One of :data:`FORMATS` for every file; None = decide from each file's name (and content for
        ``.out``/``.txt``). A forced format reads every named file and every glob match whatever its
        name; in directories only recognised names are read.

    Raises
    ------
    DFTReadError
        An entry matches no DFT file, or an explicitly named file's format cannot be recognised.
    """
    if format is not None and format not in FORMATS:
        raise DFTReadError(f"unknown DFT format {format!r}; known: {', '.join(FORMATS)}")
    pairs: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for entry in paths:
        files, kind = _candidates(str(entry))
        kept = 0
        for path in files:
            fmt = detect_format(path)
            if format is not None and kind != "dir":
                fmt = format
            elif fmt is None and kind == "file":
                raise DFTReadError(
                    f"{path}: cannot tell which DFT output this is; known names are "
                    f"{', '.join(p for p, _ in NAME_RULES)} (.out/.txt must be QE or GPAW output), "
                    f"or set data.format"
                )
            elif fmt is None:
                if format_from_name(path) == SNIFF:
                    log.info("skipping %s: neither Quantum ESPRESSO nor GPAW output", path)
                continue
            kept += 1
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                pairs.append((path, format or fmt))
        if kept == 0:
            raise DFTReadError(f"no DFT output found for {str(entry)!r} (file, directory or glob)")
    return pairs


def _read_db(path: Path) -> list[Atoms]:
    """Rows of an ASE database in id order, with key-value pairs in ``info`` (ase.io drops them)."""
    frames = []
    with ase.db.connect(str(path), type="db") as con:
        for row in con.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            atoms.info["db_id"] = int(row.id)
            if atoms.calc is not None and row.get("calculator"):
                atoms.calc.name = row.calculator
            frames.append(atoms)
    return frames


def _same_geometry(a: Atoms, b: Atoms) -> bool:
    return (len(a) == len(b) and np.array_equal(a.numbers, b.numbers)
            and np.allclose(a.positions, b.positions) and np.allclose(a.cell.array, b.cell.array))


def _gpaw_block_atoms(path: Path, k: int, block: dict) -> Atoms:
    """One configuration of GPAW's log parser as Atoms, with whatever results it holds."""
    if "atoms" not in block or "unit_cell" not in block:
        raise DFTReadError(f"{path}: configuration {k} of the GPAW log has no atoms or unit cell table")
    rows, cell_rows = block["atoms"], block["unit_cell"]
    atoms = Atoms(
        symbols=[str(row[1]) for row in rows],
        positions=[row[2:5] for row in rows],
        cell=[row[1:4] for row in cell_rows],
        pbc=[row[0] == "yes" for row in cell_rows],
    )
    contributions = block.get("energy_contributions") or {}
    results = {
        "energy": contributions.get("extrapolated"),
        "free_energy": contributions.get("free_energy"),
        "forces": block.get("forces"),
        "stress": block.get("stress_tensor"),  # 3x3, eV/A^3, ASE sign
    }
    results = {key: value for key, value in results.items() if value is not None}
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.calc.name = "gpaw"
    return atoms


def _read_gpaw_log(path: Path) -> list[tuple[int, Atoms]]:
    """Tabular GPAW text output through GPAW's own log parser (``gpaw.io.log_file_reader``).

    GPAW's ASE plugin ``gpaw-log`` wraps the same parser, with the same frame indices, but keeps only
    the extrapolated energy and drops the stress; here the free energy, the extrapolated energy, the
    forces and the stress tensor are all kept.
    """
    try:
        from gpaw.io.log_file_reader import parse_file
    except ImportError as exc:
        raise DFTReadError(
            f"{path}: GPAW text output in the tabular layout of recent GPAW needs GPAW's log parser; "
            f"install GPAW (the 'dft' extra): {exc}"
        ) from exc
    blocks = parse_file(path, keys=_GPAW_LOG_KEYS)
    frames = [_gpaw_block_atoms(path, k, block) for k, block in enumerate(blocks)]
    kept = []
    for k, atoms in enumerate(frames):
        if atoms.calc is None and k + 1 < len(frames) and _same_geometry(atoms, frames[k + 1]):
            log.debug("%s: frame %d only echoes the geometry of frame %d; skipped", path, k, k + 1)
            continue
        kept.append((k, atoms))
    return kept


def _read_gpaw_out(path: Path) -> list[tuple[int, Atoms]]:
    """Classic GPAW text output through ASE, free energies from its energy contributions."""
    frames = ase.io.read(path, index=":", format="gpaw-out")
    for atoms in frames:
        contributions = getattr(atoms.calc, "energy_contributions", None) or {}
        if "free energy" in contributions:
            atoms.calc.results["free_energy"] = float(contributions["free energy"])
    return list(enumerate(frames))


def read_file(path: str | Path, format: str) -> tuple[str, list[tuple[int, Atoms]]]:
    """Read every frame of one file as ASE returns it.

    Returns
    -------
    reader : str
        The ASE reader used (``gpaw-log`` or ``gpaw-out`` for GPAW text output, else ``format``).
    frames : list of (int, ase.Atoms)
        Each frame with its index in the file.

    Raises
    ------
    DFTReadError
        The file cannot be parsed, or holds no frame.
    """
    path = Path(path)
    reader = format
    try:
        if format == "db":
            frames = list(enumerate(_read_db(path)))
        elif format == "gpaw-out":
            reader = "gpaw-log" if _GPAW_TABULAR.search(_head(path)) else "gpaw-out"
            frames = _read_gpaw_log(path) if reader == "gpaw-log" else _read_gpaw_out(path)
        else:
            frames = list(enumerate(ase.io.read(path, index=":", format=format)))
    except DFTReadError:
        raise
    except Exception as exc:  # any parser failure: report the file and the reader
        raise DFTReadError(f"cannot parse {path} as {reader}: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise DFTReadError(f"{path}: no frames found (read as {reader})")
    return reader, frames


def read_dft(
    paths: str | Path | Sequence[str | Path],
    format: str | None = None,
    *,
    progress: bool | None = None,
) -> list[Atoms]:
    """Read DFT outputs into canonical frames (see :mod:`pipeline.data.canonical`).

    Parameters
    ----------
    paths : str, Path or sequence of them
        Files, directories (searched recursively for the names in :data:`NAME_RULES`) or globs.
    format : str, optional
        Force one of :data:`FORMATS` for every file (default: from each file's name/content).
    progress : bool, optional
        Show a tqdm progress bar over files; None = only on a terminal.

    Returns
    -------
    list of ase.Atoms
        All frames of all files in order, each with energy/forces/stress in its calculator and
        ``info['source_file']``, ``info['source_index']``, ``info['source_format']``.

    Raises
    ------
    DFTReadError
        An entry matches nothing, or a file cannot be recognised or parsed (the message names it).

    Examples
    --------
    ::

        frames = read_dft(["dft_runs/", "more/*.extxyz"])
        frames[0].get_potential_energy(), frames[0].info["source_file"]
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return read_files(find_dft_files(paths, format), progress=progress)


def read_files(pairs: Sequence[tuple[Path, str]], *, progress: bool | None = None) -> list[Atoms]:
    """Read ``(file, format)`` pairs from :func:`find_dft_files` into canonical frames, in order."""
    frames: list[Atoms] = []
    bar = tqdm(pairs, desc="reading DFT outputs", unit="file",
               disable=None if progress is None else not progress)
    for path, fmt in bar:
        reader, raw_frames = read_file(path, fmt)
        for index, raw in raw_frames:
            frames.append(canonical_frame(raw, source_file=str(path), source_index=index,
                                          source_format=fmt, source_reader=reader))
        log.info("read %d frame(s) from %s (%s)", len(raw_frames), path, reader)
    return frames
