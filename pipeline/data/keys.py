"""Keys of the batch dictionaries passed between data, models and training.

A batch is a ``dict[str, torch.Tensor]`` holding one or more structures, concatenated atom-wise and
edge-wise (built by :func:`pipeline.data.neighbors.collate`). Every key is defined once here, with
its shape and units. Conventions (one page):

- units: eV, Angstrom (A), eV/A for forces, eV/A^3 for stress;
- cell vectors are the *rows* of ``cell``; a structure without a cell has a zero cell;
- an edge ``(i, j)`` with integer shift ``S`` is the vector ``r_ij = pos[j] - pos[i] + S @ cell``
  (i = centre, j = neighbour); edge lists are full (both ``(i, j)`` and ``(j, i)``) and sorted by
  centre;
- stress follows ASE: ``stress = (1/V) dE/d(strain)`` (positive = tensile, i.e. the cell wants to
  shrink), as a full 3x3 tensor; Voigt order, where used, is xx, yy, zz, yz, xz, xy.

The same key names a target in a batch and the matching prediction in a model's output dict.
"""

from __future__ import annotations

# --- structure ------------------------------------------------------------------------------
POSITIONS = "positions"  # (n_atoms, 3) float | Cartesian positions, A
ATOMIC_NUMBERS = "atomic_numbers"  # (n_atoms,) int64 | element numbers Z
SPECIES = "species"  # (n_atoms,) int64 | index of each atom's element in the model's species list
CELL = "cell"  # (n_structures, 3, 3) float | rows = cell vectors, A; zeros where there is no cell
PBC = "pbc"  # (n_structures, 3) bool | periodic along each cell vector
BATCH = "batch"  # (n_atoms,) int64 | index of the structure each atom belongs to
NUM_ATOMS = "num_atoms"  # (n_structures,) int64 | atoms per structure

# --- graph ----------------------------------------------------------------------------------
EDGE_INDEX = "edge_index"  # (2, n_edges) int64 | [centre, neighbour] atom indices, sorted by centre
EDGE_CELL_SHIFT = "edge_cell_shift"  # (n_edges, 3) int64 | lattice shift S of the neighbour image
R_MAX = "r_max"  # () float | cutoff (A) the edges were built with

# --- targets and predictions ----------------------------------------------------------------
ENERGY = "energy"  # (n_structures,) float | total potential energy, eV
FORCES = "forces"  # (n_atoms, 3) float | forces -dE/dR, eV/A
STRESS = "stress"  # (n_structures, 3, 3) float | stress (1/V) dE/d(strain), eV/A^3 (ASE sign)
STRESS_MASK = "stress_mask"  # (n_structures,) bool | True where the structure has a stress target
PER_ATOM_ENERGY = "per_atom_energy"  # (n_atoms,) float | energy of each centre atom, eV (0 off-centre)
DESCRIPTORS = "descriptors"  # (n_atoms, n_scalar) float | final edge scalars pooled on each centre
CENTER_MASK = "center_mask"  # (n_atoms,) bool | atoms whose energies were evaluated
MOE_BALANCE_LOSS = "moe_balance_loss"  # () float | load-balancing loss summed over MoE layers (models with MoE only)
MOE_LOAD = "moe_load"  # (n_moe_layers, n_species, n_experts) float64 | centre atoms of each species routed to each expert

STRUCTURE_KEYS = (POSITIONS, ATOMIC_NUMBERS, SPECIES, CELL, PBC, BATCH, NUM_ATOMS)
GRAPH_KEYS = (EDGE_INDEX, EDGE_CELL_SHIFT, R_MAX)
TARGET_KEYS = (ENERGY, FORCES, STRESS, STRESS_MASK)
