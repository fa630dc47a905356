"""Fakes of LAMMPS's two ML-IAP unified couplings that ENFORCE what the real ones allow and forbid.

Written from LAMMPS's sources (see the :mod:`pipeline.md.mliap` docstring for the files and commits):

* :func:`generate_neighdata` is ``MLIAPData::generate_neighdata``: list position ``ii`` holds atom
  ``iatoms[ii] = ilist[ii]``; its pairs within the cutoff follow in list order with ``pair_i`` = that ATOM
  index, ``jatoms`` the neighbour's atom index (local or ghost), ``rij = x[j] - x[i]``.
* :class:`FakeMLIAPData` is ``MLIAPDataPy`` of ``src/ML-IAP/mliap_unified_couple.pyx``: read-only
  properties for the inputs (NumPy, ``int`` -> int32, float64); ``eatoms`` and ``energy`` write-only
  (reading raises ``AttributeError``, as ``property(fget=None)`` does); the ``eatoms`` setter is
  ``double[:] value_view = value`` copied into ``nlistatoms`` doubles (a buffer of float64 and that length,
  not a torch tensor); ``update_pair_forces`` is ``double[:, ::1] fij_arr = fij`` then
  ``&fij_arr[0][0]`` (float64, C-contiguous, non-empty) and ``f[i] += fij; f[j] -= fij`` (+ virial).
* :class:`FakeKokkosMLIAPData` is ``MLIAPDataPy`` of ``src/KOKKOS/mliap_unified_couple_kokkos.pyx``: arrays
  from ``create_array`` -- with ``dev=1`` :class:`FakeDeviceArray` (CuPy stand-in: ``np.asarray`` refuses
  it, DLPack and ``.data.ptr`` work), with ``dev=0`` NumPy; ``eatoms`` has a getter only (the view to fill
  in place; assigning raises); ``energy`` write-only; ``dev`` is a C-level member, not visible from
  Python; ``update_pair_forces`` dispatches on it: on the device it takes ``fij.data.ptr`` or else
  ``fij.data_ptr()`` and reads ``npairs * 3`` doubles from that address, on the host
  ``double[:, ::1]`` or ``fij.detach().numpy()``; only pairs with ``pair_i < nlistatoms`` are applied;
  ``numneighs`` is read as doubles from int memory there, so it raises here.

Stricter than the real couplings (where they would silently read garbage or write out of bounds): a force
buffer must be ``(npairs, 3)``; on the device path it must be float64 and contiguous; inputs must come back
unmodified (:meth:`LammpsSide.check_inputs_unchanged`). What LAMMPS keeps (its eatoms buffer, energy,
forces, virial) lives on a separate :class:`LammpsSide` for the tests to read.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import vesin
from ase import Atoms

# ----------------------------------------------------------------------------- one rank's atoms and lists


@dataclass
class Rank:
    """What one MPI rank holds: local atoms first, then ghosts, and the full neighbour list of its locals.

    Attributes
    ----------
    x : (ntotal, 3) float64
    elems : (ntotal,) int
        0-based element (LAMMPS type through ``pair_coeff``'s map) of every local and ghost atom.
    nlocal : int
    ilist : (inum,) int
        Local atom indices in neighbour-list order (``list->ilist``).
    firstneigh : list of int arrays
        ``firstneigh[i]``: neighbours (local or ghost indices) of local atom ``i``, including pairs in the
        skin beyond the ML-IAP cutoff, as LAMMPS's Verlet lists do.
    tag : (ntotal,) int
        The atom (ID - 1, here the ASE index) that every local or ghost atom is or is an image of.
    """

    x: np.ndarray
    elems: np.ndarray
    nlocal: int
    ilist: np.ndarray
    firstneigh: list
    tag: np.ndarray


def periodic_rank(atoms: Atoms, elems: np.ndarray, cutoff: float, *, skin: float = 1.0, seed: int = 0,
                  far_ghosts: int = 3) -> Rank:
    """All atoms of a periodic cell on one rank, stored and listed in shuffled orders.

    The local atoms are stored in a permuted order (LAMMPS sorts its atoms), the list order ``ilist`` is
    another permutation (not the identity), every neighbour list is shuffled and reaches ``skin`` beyond
    ``cutoff``, periodic neighbours are ghost atoms (one per image), and ``far_ghosts`` ghosts are in no
    pair (the ghost shell is wider than the pairs).
    """
    rng = np.random.default_rng(seed)
    n = len(atoms)
    store = rng.permutation(n)  # local index -> ASE index
    local_of = np.argsort(store)  # ASE index -> local index
    i, j, shifts = vesin.NeighborList(cutoff=cutoff + skin, full_list=True).compute(
        atoms.positions, atoms.cell.array, atoms.pbc.tolist(), quantities="ijS"
    )
    ghosts: dict[tuple, int] = {}
    ghost_tag, ghost_x = [], []
    firstneigh: list[list[int]] = [[] for _ in range(n)]
    for a, b, s in zip(i, j, shifts):
        if not s.any():
            firstneigh[local_of[a]].append(int(local_of[b]))
            continue
        key = (int(b), *map(int, s))
        if key not in ghosts:
            ghosts[key] = n + len(ghost_tag)
            ghost_tag.append(int(b))
            ghost_x.append(atoms.positions[b] + s @ atoms.cell.array)
        firstneigh[local_of[a]].append(ghosts[key])
    for extra in range(far_ghosts):
        ghost_tag.append(extra)
        ghost_x.append(atoms.positions[extra] + 50.0)
    x = np.concatenate([atoms.positions[store], np.asarray(ghost_x).reshape(-1, 3)])
    tag = np.concatenate([store, np.asarray(ghost_tag, dtype=np.int64)])
    ilist = rng.permutation(n)
    while n > 1 and np.array_equal(ilist, np.arange(n)):
        ilist = rng.permutation(n)
    neighbours = [rng.permutation(np.asarray(js, dtype=np.int64)) for js in firstneigh]
    return Rank(x=x, elems=np.asarray(elems)[tag], nlocal=n, ilist=ilist, firstneigh=neighbours, tag=tag)


def generate_neighdata(rank: Rank, cutoff: float) -> dict[str, np.ndarray]:
    """``MLIAPData::generate_neighdata`` (src/ML-IAP/mliap_data.cpp) with one cutoff for every element pair
    (``cut = 2 * radelem * rcutfac`` with ``radelem = 1``): the arrays, in C types (int -> int32)."""
    cutsq = cutoff * cutoff
    pair_i, jatoms, rij, numneighs = [], [], [], []
    for i in rank.ilist:
        js = np.asarray(rank.firstneigh[i], dtype=np.int64)
        d = rank.x[js] - rank.x[i] if len(js) else np.zeros((0, 3))
        inside = np.einsum("ij,ij->i", d, d) < cutsq
        pair_i.extend([int(i)] * int(inside.sum()))
        jatoms.extend(js[inside].tolist())
        rij.append(d[inside])
        numneighs.append(int(inside.sum()))
    jatoms_arr = np.asarray(jatoms, dtype=np.int32)
    iatoms = np.asarray(rank.ilist, dtype=np.int32)
    elems = np.asarray(rank.elems, dtype=np.int32)
    return {
        "iatoms": iatoms,
        "ielems": elems[iatoms],
        "numneighs": np.asarray(numneighs, dtype=np.int32),
        "pair_i": np.asarray(pair_i, dtype=np.int32),
        "jatoms": jatoms_arr,
        "jelems": elems[jatoms_arr],
        "rij": np.ascontiguousarray(np.concatenate([np.zeros((0, 3)), *rij]), dtype=np.float64),
        "elems": elems,
    }


# ----------------------------------------------------------------------------- what LAMMPS keeps


class LammpsSide:
    """LAMMPS's memory behind one ``MLIAPDataPy``: inputs, the eatoms buffer, energy, forces, virial."""

    def __init__(self, rank: Rank, cutoff: float, *, vflag: int = 1) -> None:
        self.rank = rank
        self.arrays = generate_neighdata(rank, cutoff)
        self.saved = {name: a.copy() for name, a in self.arrays.items()}
        self.nlistatoms = len(rank.ilist)
        self.npairs = len(self.arrays["pair_i"])
        self.ntotal = len(rank.x)
        self.eatoms = np.full(self.nlistatoms, np.nan)  # uninitialised until the model writes it
        self.energy = np.nan
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros(6)
        self.vflag = vflag
        self.dlpack_exports: Counter = Counter()  # name -> DLPack exports of the device arrays

    def add_pair_forces(self, fij: np.ndarray, *, kokkos: bool) -> None:
        """``update_pair_forces`` of mliap_unified.cpp (host) / mliap_unified_kokkos.cpp (KOKKOS)."""
        pair_i, jatoms, rij = self.arrays["pair_i"], self.arrays["jatoms"], self.arrays["rij"]
        keep = pair_i < self.nlistatoms if kokkos else np.ones(len(pair_i), dtype=bool)
        np.add.at(self.f, pair_i[keep], fij[keep])
        np.add.at(self.f, jatoms[keep], -fij[keep])
        if self.vflag:
            r, g = rij[keep], fij[keep]
            self.virial += -np.stack([r[:, 0] * g[:, 0], r[:, 1] * g[:, 1], r[:, 2] * g[:, 2],
                                      r[:, 0] * g[:, 1], r[:, 0] * g[:, 2], r[:, 1] * g[:, 2]]).sum(axis=1)

    def eatom(self) -> np.ndarray:
        """``PairMLIAP::e_tally``: ``eatom[iatoms[ii]] += eatoms[ii]`` (per local atom index)."""
        out = np.zeros(self.rank.nlocal)
        np.add.at(out, self.arrays["iatoms"], self.eatoms)
        return out

    def energies_by_tag(self, natoms: int) -> np.ndarray:
        out = np.full(natoms, np.nan)
        out[self.rank.tag[: self.rank.nlocal]] = self.eatom()
        return out

    def forces_by_tag(self, natoms: int) -> np.ndarray:
        """Forces per atom after LAMMPS's reverse communication (ghost forces to their owners)."""
        out = np.zeros((natoms, 3))
        np.add.at(out, self.rank.tag, self.f)
        return out

    def check_inputs_unchanged(self) -> None:
        for name, a in self.arrays.items():
            if not np.array_equal(a, self.saved[name]):
                raise AssertionError(f"the model modified LAMMPS's {name} array")


# ----------------------------------------------------------------------------- Cython conversions


def double_buffer(value, *, ndim: int, c_contiguous: bool) -> np.ndarray:
    """Cython's ``cdef double[:] v = value`` / ``double[:, ::1]``: a buffer of C doubles of that rank."""
    try:
        view = memoryview(value)
    except TypeError as exc:  # e.g. a torch tensor: no buffer protocol
        raise TypeError(f"a bytes-like object is required, not '{type(value).__name__}'") from exc
    if view.format != "d":
        raise ValueError(f"Buffer dtype mismatch, expected 'double' but got '{view.format}'")
    if view.ndim != ndim:
        raise ValueError(f"Buffer has wrong number of dimensions (expected {ndim}, got {view.ndim})")
    if c_contiguous and not view.c_contiguous:
        raise ValueError("ndarray is not C-contiguous")
    return np.asarray(view)


def cython_double(value) -> float:
    """``<double>value`` on a Python object (``PyFloat_AsDouble``)."""
    if isinstance(value, (str, bytes)):
        raise TypeError("must be real number, not str")
    return float(value)


def _read_only(name: str) -> property:
    return property(lambda self: self._get(name))


# ----------------------------------------------------------------------------- host coupling


class _FakeDataBase:
    """What both couplings' ``MLIAPDataPy`` expose alike: the counts and the read-only neighbour arrays of a
    :class:`LammpsSide` (a never-grown array is NULL -> None), each array passed through :meth:`_wrap`."""

    def __init__(self, lammps: LammpsSide) -> None:
        self._lmp = lammps

    def _wrap(self, memory: np.ndarray, name: str):
        return memory

    def _get(self, name: str):
        a = self._lmp.arrays[name]
        return None if a.size == 0 and name != "elems" else self._wrap(a, name)

    nlistatoms = property(lambda self: self._lmp.nlistatoms)
    npairs = property(lambda self: self._lmp.npairs)
    ntotal = property(lambda self: self._lmp.ntotal)
    natomneigh = property(lambda self: self._lmp.nlistatoms)
    eflag = property(lambda self: 1)
    vflag = property(lambda self: self._lmp.vflag)
    ndescriptors = property(lambda self: 1)
    nparams = property(lambda self: 1)
    elems = _read_only("elems")
    iatoms = _read_only("iatoms")
    ielems = _read_only("ielems")
    pair_i = _read_only("pair_i")
    jatoms = _read_only("jatoms")
    pair_j = _read_only("jatoms")
    jelems = _read_only("jelems")
    rij = _read_only("rij")


class FakeMLIAPData(_FakeDataBase):
    """``MLIAPDataPy`` of src/ML-IAP/mliap_unified_couple.pyx over a :class:`LammpsSide`."""

    numneighs = _read_only("numneighs")
    f = property(lambda self: self._lmp.f)

    def _set_eatoms(self, value) -> None:
        if self._lmp.nlistatoms == 0:
            raise ValueError("attempt to set NULL eatoms")
        buffer = double_buffer(value, ndim=1, c_contiguous=False)
        if buffer.shape != (self._lmp.nlistatoms,):
            raise ValueError(f"Assignment to slice of wrong length, expected {self._lmp.nlistatoms}, "
                             f"got {buffer.shape[0]}")
        self._lmp.eatoms[:] = buffer

    def _set_energy(self, value) -> None:
        self._lmp.energy = cython_double(value)

    eatoms = property(fget=None, fset=_set_eatoms)  # write_only_property
    energy = property(fget=None, fset=_set_energy)  # write_only_property

    def update_pair_forces(self, fij) -> None:
        buffer = double_buffer(fij, ndim=2, c_contiguous=True)
        if buffer.shape[0] == 0:
            raise IndexError("Out of bounds on buffer access (axis 0)")  # &fij_arr[0][0]
        if buffer.shape != (self._lmp.npairs, 3):  # the C++ side reads npairs * 3 doubles unchecked
            raise AssertionError(f"fij has shape {buffer.shape}, LAMMPS reads ({self._lmp.npairs}, 3)")
        self._lmp.add_pair_forces(buffer.copy(), kokkos=False)


# ----------------------------------------------------------------------------- KOKKOS coupling


class FakeDeviceArray:
    """A CuPy array over LAMMPS's device memory, as ``create_array`` returns with ``dev == 1``.

    ``np.asarray`` refuses it (CuPy does: no implicit device -> host copy); it offers ``__dlpack__`` /
    ``__dlpack_device__`` (counted on the :class:`LammpsSide`) and CuPy's ``.data.ptr``. The memory is
    host memory here, so DLPack reports a CPU device.
    """

    def __init__(self, memory: np.ndarray, name: str, lammps: LammpsSide) -> None:
        self._memory, self._name, self._lmp = memory, name, lammps
        self.shape, self.dtype, self.ndim, self.size = memory.shape, memory.dtype, memory.ndim, memory.size

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __dlpack__(self, **kwargs):
        self._lmp.dlpack_exports[self._name] += 1
        return self._memory.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._memory.__dlpack_device__()

    @property
    def data(self) -> SimpleNamespace:
        return SimpleNamespace(ptr=self._memory.ctypes.data)

    def __len__(self) -> int:
        return self.shape[0]


class FakeKokkosMLIAPData(_FakeDataBase):
    """``MLIAPDataPy`` of src/KOKKOS/mliap_unified_couple_kokkos.pyx over a :class:`LammpsSide`."""

    def __init__(self, lammps: LammpsSide, *, dev: int) -> None:
        super().__init__(lammps)
        self._dev = dev  # cdef MLIAPDataKokkosDevice *data -> data.dev: not visible from Python

    def _wrap(self, memory: np.ndarray, name: str):
        return FakeDeviceArray(memory, name, self._lmp) if self._dev == 1 else memory

    @property
    def numneighs(self):
        raise NotImplementedError("the KOKKOS coupling reads numneighs as doubles from int memory: unusable")

    @property
    def f(self):
        return self._wrap(self._lmp.f, "f")

    @property
    def eatoms(self):  # a getter only: the view to fill in place
        if self._lmp.nlistatoms == 0:
            raise ValueError("attempt to set NULL eatoms")
        return self._wrap(self._lmp.eatoms, "eatoms")

    def _set_energy(self, value) -> None:
        self._lmp.energy = cython_double(value)  # data.energy[0] = <double>value

    energy = property(fget=None, fset=_set_energy)  # write_only_property

    def update_pair_forces(self, fij) -> None:
        if self._dev == 0:
            self._update_pair_forces_cpu(fij)
        else:
            self._update_pair_forces_gpu(fij)

    def _update_pair_forces_cpu(self, fij) -> None:
        try:
            buffer = double_buffer(fij, ndim=2, c_contiguous=True)
        except Exception:  # noqa: BLE001 (the pyx has a bare except)
            buffer = fij.detach().numpy().astype(np.double)
        if buffer.shape != (self._lmp.npairs, 3):
            raise AssertionError(f"fij has shape {buffer.shape}, LAMMPS reads ({self._lmp.npairs}, 3)")
        self._lmp.add_pair_forces(np.ascontiguousarray(buffer), kokkos=True)

    def _update_pair_forces_gpu(self, fij) -> None:
        try:
            ptr = fij.data.ptr  # CuPy
        except Exception:  # noqa: BLE001 (the pyx has a bare except)
            ptr = fij.data_ptr()  # torch (a NumPy array fails here, as in the real coupling)
        # stricter than LAMMPS, which reads npairs * 3 doubles at ptr whatever fij is
        import torch

        if isinstance(fij, torch.Tensor):
            if fij.dtype != torch.float64 or not fij.is_contiguous() or tuple(fij.shape) != (self._lmp.npairs, 3):
                raise AssertionError(f"fij must be a contiguous float64 ({self._lmp.npairs}, 3) tensor, got "
                                     f"{fij.dtype} {tuple(fij.shape)} contiguous={fij.is_contiguous()}")
            if fij.device.type != "cpu":
                raise AssertionError("the fake's device memory is host memory: fij must be on the CPU here")
        n = 3 * self._lmp.npairs
        values = np.frombuffer((ctypes.c_double * n).from_address(ptr), dtype=np.float64).copy()
        self._lmp.add_pair_forces(values.reshape(-1, 3), kokkos=True)
