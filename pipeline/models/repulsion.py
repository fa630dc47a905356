"""Short-range nuclear repulsion prior: the ZBL pair energy, switched off before bonding distances.

A learned potential knows nothing about distances its training data never reach; at close approach it
may even attract, and MD then pushes atoms into each other (an adsorbate sinking through a surface).
This prior adds, per pair i-j at distance r,

    E_ij(r) = k_e Z_i Z_j / r * phi(r / a_ij) * S(r),    a_ij = 0.46850 A / (Z_i^0.23 + Z_j^0.23),

the Ziegler-Biersack-Littmark universal screened Coulomb repulsion (k_e = e^2 / (4 pi eps_0) =
14.399645 eV A; phi a sum of four exponentials), times a switch S that is 1 below r_in and 0 above r_out
with zero first and second derivatives at both ends (S = 1 - (10 t^3 - 15 t^4 + 6 t^5), t = (r - r_in) /
(r_out - r_in)). r_in and r_out are fractions of the pair's sum of covalent radii (:data:`ase.data.covalent_radii`).
The prior is off (exactly zero, no gradient) at every distance the training data sample when r_out lies
below them, so the learned energy is fitted where there are data and the prior takes over where there
are none.

Each pair's energy is split half and half between its two atoms, so per-atom energies add to the total
and centre-subset evaluation stays additive (the model's full neighbour list holds i->j and j->i).

>>> import torch
>>> from pipeline.config import RepulsionConfig
>>> rep = ZBLRepulsion(RepulsionConfig(), atomic_numbers=torch.tensor([6, 8]))
>>> round(float(rep.pair_energy(torch.tensor([0.5]), torch.tensor([0]), torch.tensor([1]))), 2)
151.5
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii

from pipeline.config import RepulsionConfig

COULOMB_EV_A = 14.399645  # e^2 / (4 pi eps_0), eV A
ZBL_LENGTH_A = 0.46850  # 0.8854 * Bohr radius, A
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


def smooth_switch(r: torch.Tensor, r_in: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """1 for r <= r_in, 0 for r >= r_out, quintic smoothstep in between (C2 at both ends)."""
    t = ((r - r_in) / (r_out - r_in)).clamp(0.0, 1.0)
    return 1.0 - t * t * t * (10.0 + t * (-15.0 + 6.0 * t))


class ZBLRepulsion(torch.nn.Module):
    """ZBL repulsion with a covalent-radius switch, for the species of one model (no trainable weights).

    Parameters
    ----------
    config : RepulsionConfig
        ``inner_fraction`` / ``outer_fraction`` of the covalent-radius sum where the switch starts / ends.
    atomic_numbers : (n_species,) int tensor
        Atomic number of each species index.
    """

    def __init__(self, config: RepulsionConfig, atomic_numbers: torch.Tensor) -> None:
        super().__init__()
        z = atomic_numbers.to(torch.float64)
        radii = torch.as_tensor(covalent_radii, dtype=torch.float64).index_select(0, atomic_numbers.long())
        radius_sum = radii[:, None] + radii[None, :]  # [n_species, n_species]
        dtype = torch.get_default_dtype()
        self.register_buffer("charge_product", (COULOMB_EV_A * z[:, None] * z[None, :]).to(dtype), persistent=False)
        self.register_buffer("screening_length", (ZBL_LENGTH_A / (z[:, None] ** 0.23 + z[None, :] ** 0.23)).to(dtype),
                             persistent=False)
        self.register_buffer("r_inner", (config.inner_fraction * radius_sum).to(dtype), persistent=False)
        self.register_buffer("r_outer", (config.outer_fraction * radius_sum).to(dtype), persistent=False)

    @property
    def max_range(self) -> float:
        """Largest distance (A) at which any species pair still feels the prior."""
        return float(self.r_outer.max())

    def pair_energy(self, lengths: torch.Tensor, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """Switched ZBL energy (eV) of each pair ``(n_pairs,)`` at ``lengths`` (A), species indices i and j."""
        zz = self.charge_product[species_i, species_j]
        x = lengths / self.screening_length[species_i, species_j]
        phi = sum(c * torch.exp(-b * x) for c, b in zip(ZBL_COEFFICIENTS, ZBL_EXPONENTS))
        switch = smooth_switch(lengths, self.r_inner[species_i, species_j], self.r_outer[species_i, species_j])
        return zz / lengths * phi * switch

    def centre_energies(
        self, vectors: torch.Tensor, edge_index: torch.Tensor, centre: torch.Tensor, n_centres: int,
        species: torch.Tensor,
    ) -> torch.Tensor:
        """Per-centre repulsion energy ``(n_centres,)`` eV: half of each edge's pair energy.

        ``vectors`` ``(n_edges, 3)`` and ``edge_index`` ``(2, n_edges)`` are the model's edges (centre
        first), ``centre`` ``(n_edges,)`` each edge's compact centre index, ``species`` per atom.
        """
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        si, sj = species.index_select(0, edge_index[0]), species.index_select(0, edge_index[1])
        close = lengths.detach() < self.r_outer[si, sj]
        out = vectors.new_zeros(n_centres)
        if not bool(close.any()):
            return out + 0.0 * vectors.sum()  # keep the graph connected for autograd
        energy = 0.5 * self.pair_energy(lengths[close], si[close], sj[close])
        return out.index_add(0, centre[close], energy)

    def extra_repr(self) -> str:
        return f"max_range={self.max_range:.3f} A"
