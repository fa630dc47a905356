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

    def reset(self) -> None:
        """Forget the list: the next :meth:`update` builds a new one (counts and times are kept)."""
        self._reference = None

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


class DomainVerletList:
    """The Verlet list of one MPI rank's domain: its local atoms and the ghost atoms LAMMPS gives it.

    The positions are those of LAMMPS's atom arrays, local atoms first, then ghosts, periodic images
    included as ghosts of their own: the list is built NON-periodically over these points (no minimum
    image; an atom near its own image has the image as a ghost). Centres are the local atoms and the
    ghosts of OTHER ranks' atoms within ``cutoff + skin`` of a local atom at the build (every such ghost
    within ``cutoff`` of a local atom until the next build): their energy gradients on the local atoms
    are the forces that other ranks' centres cause, so the local forces are exact without a reverse
    communication. Ghosts that are periodic images of this rank's own atoms are never centres: the
    gradients of the local centres on them belong to their local atom (:attr:`owner`), to which the
    caller adds them. Pairs are kept for centres only.

    The list is reused while the atom arrays hold the same atoms in the same slots (same IDs, same
    ``nlocal``) and no slot has moved more than ``skin / 2`` since the build (a periodic image that
    LAMMPS re-creates elsewhere moves by a box length: rebuilt); LAMMPS re-orders its arrays only when it
    re-neighbours or atoms migrate, which changes the IDs and triggers a rebuild.

    Parameters
    ----------
    cutoff : float
        The largest interaction cutoff, A.
    skin : float
        Verlet skin, A (0 = rebuild at every call).

    Attributes
    ----------
    edge_index : (2, n_edges) int64
        ``[centre, neighbour]`` slots, sorted by centre, centres only.
    centres : (n_slots,) bool
        Local atoms and ghost centres.
    owner : (n_slots,) int64
        The local slot of each slot's atom (itself for local atoms, the local atom of a periodic image of
        it), -1 for ghosts of other ranks' atoms.
    n_local, n_ghost_centres : int
    n_builds, n_calls : int
    build_time_s : float

    >>> nl = DomainVerletList(cutoff=3.0, skin=1.0)
    >>> x = np.array([[0.0, 0, 0], [2.5, 0, 0], [5.0, 0, 0], [-3.0, 0, 0]])  # local 0; ghosts 1, 2, 3
    >>> nl.update(x, np.array([1, 2, 3, 1]), 1)  # ghost 3: an image of the local atom 1
    True
    >>> nl.centres.tolist(), nl.n_ghost_centres, nl.edge_index.tolist(), nl.owner.tolist()
    ([True, True, False, False], 1, [[0, 0, 1, 1], [1, 3, 0, 2]], [0, -1, -1, 0])
    >>> nl.update(x + 0.2, np.array([1, 2, 3, 1]), 1), nl.update(x, np.array([1, 3, 2, 1]), 1)
    (False, True)
    """

    def __init__(self, *, cutoff: float, skin: float) -> None:
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff {cutoff}, skin {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.edge_index = np.zeros((2, 0), dtype=np.int64)
        self.centres = np.zeros(0, dtype=bool)
        self.owner = np.zeros(0, dtype=np.int64)
        self.n_local = 0
        self.n_ghost_centres = 0
        self.n_builds = 0
        self.n_calls = 0
        self.build_time_s = 0.0
        self._reference: np.ndarray | None = None
        self._tags: np.ndarray | None = None

    def _valid(self, positions: np.ndarray, tags: np.ndarray, nlocal: int) -> bool:
        if self._reference is None or self.skin == 0 or nlocal != self.n_local:
            return False
        if self._tags.shape != tags.shape or not np.array_equal(self._tags, tags):
            return False
        if not len(positions):
            return True
        moved = np.sqrt(np.max(np.sum((positions - self._reference) ** 2, axis=1)))
        return bool(moved <= 0.5 * self.skin)

    def update(self, positions: np.ndarray, tags: np.ndarray, nlocal: int) -> bool:
        """Check the list against the slots' ``positions`` ``(n_slots, 3)`` and atom IDs ``tags``
        ``(n_slots,)`` (the first ``nlocal`` local); rebuild it if needed. Returns whether it was rebuilt."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        tags = np.asarray(tags, dtype=np.int64).reshape(-1)
        nlocal = int(nlocal)
        if tags.shape[0] != positions.shape[0] or not 0 <= nlocal <= positions.shape[0]:
            raise ValueError(f"{positions.shape[0]} positions, {tags.shape[0]} IDs, nlocal {nlocal}")
        self.n_calls += 1
        if self._valid(positions, tags, nlocal):
            return False
        start = time.perf_counter()
        edge_index, _ = neighbor_list(positions, np.zeros((3, 3)), (False, False, False), self.cutoff + self.skin)
        owner_of_tag = np.full(int(tags.max(initial=0)) + 1, -1, dtype=np.int64)
        owner_of_tag[tags[:nlocal]] = np.arange(nlocal)
        owner = owner_of_tag[tags]  # [n_slots]
        from_local = edge_index[0] < nlocal
        centres = np.zeros(positions.shape[0], dtype=bool)
        centres[edge_index[1, from_local]] = True  # ghosts within cutoff + skin of a local atom ...
        centres &= owner < 0  # ... of other ranks' atoms
        centres[:nlocal] = True
        self.edge_index = np.ascontiguousarray(edge_index[:, centres[edge_index[0]]])
        self.centres = centres
        self.owner = owner
        self.n_local = nlocal
        self.n_ghost_centres = int(centres.sum()) - nlocal
        self.build_time_s += time.perf_counter() - start
        self.n_builds += 1
        self._reference = positions.copy()
        self._tags = tags.copy()
        return True
