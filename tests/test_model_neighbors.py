"""Neighbour lists (vesin) against ASE, and batching of ase.Atoms."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list as ase_neighbor_list

from pipeline.data import keys as K
from pipeline.data.neighbors import average_num_neighbors, collate, neighbor_list
from pipeline.models.testing import SPECIES, co_gas, pt_bulk, pt_co_slab

torch.set_num_threads(1)


def _as_set(i, j, shifts):
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, shifts)}


STRUCTURES = {
    "bulk_small_cell": lambda: pt_bulk(),  # 1-atom cell, many images within the cutoff
    "bulk_cubic": lambda: pt_bulk(cubic=True),
    "slab_co": lambda: pt_co_slab(),
    "slab_outside_cell": lambda: _shifted(pt_co_slab(), [7.0, -3.0, 25.0]),
    "gas_no_cell": co_gas,
}


def _shifted(atoms, offset):
    atoms.positions += offset
    return atoms


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_matches_ase_neighbor_list(name):
    atoms = STRUCTURES[name]()
    r_max = 4.5
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
    i, j, s = ase_neighbor_list("ijS", atoms, r_max)
    assert _as_set(edge_index[0], edge_index[1], shifts) == _as_set(i, j, s)
    assert np.all(np.diff(edge_index[0]) >= 0), "edges must be sorted by centre"
    vec = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts @ atoms.cell.array
    assert np.linalg.norm(vec, axis=1).max() <= r_max
    assert np.all(shifts[:, ~atoms.pbc] == 0)


def test_periodic_direction_without_cell_raises():
    atoms = Atoms("Pt2", positions=[[0, 0, 0], [1, 1, 1]], pbc=True)
    with pytest.raises(ValueError, match="zero cell vector"):
        neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)


def test_collate_offsets_and_shapes():
    frames = [pt_co_slab(), pt_bulk(), co_gas()]
    batch = collate(frames, species=SPECIES, r_max=4.0)
    n = [len(a) for a in frames]
    assert batch[K.POSITIONS].shape == (sum(n), 3) and batch[K.POSITIONS].dtype == torch.float64
    assert batch[K.CELL].shape == (3, 3, 3) and batch[K.PBC].shape == (3, 3)
    assert batch[K.NUM_ATOMS].tolist() == n
    assert batch[K.BATCH].tolist() == [0] * n[0] + [1] * n[1] + [2] * n[2]
    centre, neighbor = batch[K.EDGE_INDEX]
    assert torch.equal(batch[K.BATCH][centre], batch[K.BATCH][neighbor]), "edges never cross structures"
    assert torch.all(centre[1:] >= centre[:-1])
    assert batch[K.SPECIES][-2:].tolist() == [SPECIES.index(s) for s in frames[2].get_chemical_symbols()]
    assert torch.all(batch[K.CELL][2] == 0)


def test_collate_targets():
    frames = [pt_bulk(), co_gas()]
    frames[0].calc = SinglePointCalculator(frames[0], energy=-6.0, forces=np.ones((1, 3)), stress=np.arange(6.0))
    frames[1].calc = SinglePointCalculator(frames[1], energy=-14.0, forces=np.zeros((2, 3)))
    batch = collate(frames, species=SPECIES, r_max=4.0)
    assert batch[K.ENERGY].tolist() == [-6.0, -14.0]
    assert batch[K.FORCES].shape == (3, 3)
    assert batch[K.STRESS_MASK].tolist() == [True, False]
    xx, yy, zz, yz, xz, xy = range(6)
    assert batch[K.STRESS][0].tolist() == [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]
    frames[1].calc = None
    with pytest.raises(ValueError, match="have no energy"):
        collate(frames, species=SPECIES, r_max=4.0)
    assert K.ENERGY not in collate(frames, species=SPECIES, r_max=4.0, with_targets=False)


def test_unknown_species_raise():
    with pytest.raises(ValueError, match=r"\['H'\] are not among the model species"):
        collate([Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])], species=SPECIES, r_max=4.0)


def test_average_num_neighbors():
    fcc = pt_bulk(rattle=0.0)
    assert average_num_neighbors([fcc], 3.0) == 12.0  # first shell at 2.77 A
    assert average_num_neighbors([fcc, co_gas()], 3.0) == pytest.approx((12 + 2) / 3)
