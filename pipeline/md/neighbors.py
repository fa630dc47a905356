"""A Verlet neighbour list for MD: built with ``cutoff + skin``, rebuilt only when needed.

The list (vesin, via :func:`pipeline.data.neighbors.neighbor_list`) holds every pair within
``cutoff + skin`` at the time of the build. As long as no atom has moved more than ``skin / 2`` since
then, every pair now within ``cutoff`` is still in the list, so the same pairs (with their lattice
shifts) are reused and only the pair vectors are recomputed from the current positions. The list is
rebuilt when an atom has moved further, or when the cell, the periodicity or the number of atoms changed.

MD codes wrap atoms back into the cell (LAMMPS does at its own reneighbouring). A wrapped atom has jumped
by a lattice vector, which is not a displacement: :meth:`VerletList.update` returns positions unwrapped to
the image nearest the reference positions of the last build, for which the stored shifts are valid.

>>> import numpy as np
>>> nl = VerletList(cutoff=3.0, skin=1.0)
>>> pos = np.array([[0.0, 0.0, 0.0], [2.5, 0.0, 0.0]])
>>> cell, pbc = np.eye(3) * 10.0, (True, True, True)
>>> _ = nl.update(pos, cell, pbc); _ = nl.update(pos + [0.3, 0, 0], cell, pbc)
>>> nl.n_builds, nl.edge_index.shape[1]
(1, 2)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from pipeline.data.neighbors import neighbor_list


class VerletList:
    """Pairs within ``cutoff + skin`` (A), reused while every atom stays within ``skin / 2`` of its reference.

    Parameters
    ----------
    cutoff : float
        The largest interaction cutoff, A.
    skin : float
        Verlet skin, A (0 = rebuild at every call).

    Attributes
    ----------
    edge_index : (2, n_edges) int64
        ``[centre, neighbour]`` of the current list, sorted by centre.
    shifts : (n_edges, 3) int64
        Lattice shifts valid for the positions returned by the last :meth:`update`.
    n_builds, n_calls : int
        Builds and updates so far.
    build_time_s : float
        Total wall time (s) spent building lists.
    """

    def __init__(self, *, cutoff: float, skin: float) -> None:
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff {cutoff}, skin {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.edge_index = np.zeros((2, 0), dtype=np.int64)
        self.shifts = np.zeros((0, 3), dtype=np.int64)
        self.n_builds = 0
        self.n_calls = 0
        self.build_time_s = 0.0
        self._reference: np.ndarray | None = None
        self._cell: np.ndarray | None = None
        self._pbc: np.ndarray | None = None

    def _needs_build(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        if self._reference is None or self._reference.shape != positions.shape or self.skin == 0:
            return True
        if not np.array_equal(pbc, self._pbc):
            return True
        periodic_rows = cell[pbc]
        return not np.allclose(periodic_rows, self._cell[pbc], rtol=0.0, atol=1e-10)

    def _unwrap(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
        """Each position moved by lattice vectors (periodic directions) to the image nearest its reference."""
        if not pbc.any():
            return positions
        disp = positions - self._reference
        if abs(np.linalg.det(cell)) > 1e-12:
            frac = disp @ np.linalg.inv(cell)  # [n_atoms, 3]
        else:
            frac = np.zeros_like(disp)
            frac[:, pbc] = disp @ np.linalg.pinv(cell[pbc])
        jumps = np.where(pbc, np.round(frac), 0.0)
        return positions - jumps @ cell

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool]) -> tuple[np.ndarray, bool]:
        """Check the list against ``positions`` and rebuild it if needed.

        Parameters
        ----------
        positions : (n_atoms, 3) array
            Current positions, A (possibly wrapped into the cell).
        cell : (3, 3) array
            Rows are the cell vectors, A.
        pbc : three bools

        Returns
        -------
        positions : (n_atoms, 3) float64 array
            The positions to evaluate with :attr:`edge_index` / :attr:`shifts` (unwrapped to the images
            nearest the last build's positions, or the given ones after a rebuild).
        rebuilt : bool
        """
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = np.asarray(pbc, dtype=bool).reshape(3)
        self.n_calls += 1
        if not self._needs_build(positions, cell, pbc):
            unwrapped = self._unwrap(positions, cell, pbc)
            moved = np.sqrt(np.max(np.sum((unwrapped - self._reference) ** 2, axis=1))) if len(positions) else 0.0
            if moved <= 0.5 * self.skin:
                return unwrapped, False
        start = time.perf_counter()
        self.edge_index, self.shifts = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
        self.build_time_s += time.perf_counter() - start
        self.n_builds += 1
        self._reference = positions.copy()
        self._cell = cell.copy()
        self._pbc = pbc.copy()
        return positions, True
