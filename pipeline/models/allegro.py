"""The Allegro expert: a strictly local E(3)-equivariant interatomic potential (Musaelian et al. 2023).

Per edge i->j within r_max: an enveloped Bessel basis and the species pair give edge scalars
(:class:`TwoBodyScalarEmbedding`); spherical harmonics weighted per channel start the tensor track
(:class:`TensorEmbedding`); ``num_layers`` :class:`AllegroLayer` couple each edge's tensors with its
centre's environment and update the scalars; a readout MLP gives an edge energy (times the
envelope). Atom i's energy is ``scale[s_i] * sum_j e_ij / sqrt(avg_num_neighbors) + shift[s_i]``, plus
half of its pairs' short-range ZBL repulsion when ``config.repulsion`` is enabled
(:mod:`pipeline.models.repulsion`; zero beyond ~0.55 covalent-radius sums).

Centre-subset evaluation: given ``centers``, only the edges centred on those atoms are built (every
atom still serves as a neighbour) and only their energies are computed (others zero). Energies and
forces of the subsets of a partition add up to the full evaluation. Pairs of the input graph at or
beyond ``r_max`` are dropped (they contribute exactly zero), so any graph with a cutoff of at least
``r_max`` may be passed.

>>> from ase.build import molecule
>>> from pipeline.config import ExpertConfig
>>> from pipeline.data.neighbors import collate
>>> model = build_model(ExpertConfig(l_max=1, num_layers=1, num_scalar_features=8, num_tensor_features=4), ("C", "O"))
>>> out = model(collate([molecule("CO")], species=model.species, r_max=model.r_max))
>>> out["energy"].shape, out["forces"].shape
(torch.Size([1]), torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from ase.data import atomic_numbers

from pipeline.config import ExpertConfig, expert_config
from pipeline.data import keys as K
from pipeline.models.embedding import (
    TensorEmbedding,
    TwoBodyScalarEmbedding,
    edge_sum_norm,
)
from pipeline.models.geometry import (
    centre_edges,
    centre_mask,
    edge_vectors,
    evaluate_with_derivatives,
)
from pipeline.models.layers import AllegroLayer
from pipeline.models.layout import EdgeLayout
from pipeline.models.mlp import make_mlp
from pipeline.models.moe import RoutingContext, moe_modules, routing_outputs
from pipeline.models.radial import BesselBasis, PolynomialEnvelope
from pipeline.models.repulsion import ZBLRepulsion
from pipeline.models.scale_shift import PerSpeciesScaleShift
from pipeline.models.tensor_product import plan_tensor_track


class AllegroModel(torch.nn.Module):
    """Allegro expert built from an :class:`~pipeline.config.ExpertConfig`.

    A :class:`~pipeline.models.contract.Potential`: inputs, centre subsets and outputs (with shapes
    and units) are those of :mod:`pipeline.models.contract`. The module keeps no state between calls
    (MoE routing statistics are outputs), so it can be deep-copied at any time.

    Parameters
    ----------
    config : ExpertConfig
        Capacity (cutoff, l_max, layers, feature sizes, MLP widths, parity, avg_num_neighbors).
    species : sequence of str
        Chemical symbols; the batch's :data:`keys.SPECIES` indexes into this order.

    Build with :func:`build_model` to choose dtype and seed.
    """

    def __init__(self, config: ExpertConfig, species: Sequence[str]) -> None:
        super().__init__()
        species = tuple(species)
        if not species or len(set(species)) != len(species):
            raise ValueError(f"species must be a non-empty list of distinct symbols, got {list(species)}")
        self.config = config
        self.species = species
        n_species = len(species)
        c = config
        self.envelope = PolynomialEnvelope(r_max=c.r_max, p=c.envelope_p)
        self.radial = BesselBasis(r_max=c.r_max, num_basis=c.num_bessels)
        self.two_body = TwoBodyScalarEmbedding(
            num_species=n_species,
            num_basis=c.num_bessels,
            num_features=c.num_scalar_features,
            hidden=c.two_body_mlp_hidden,
            activation=c.activation,
        )
        sh_irreps, plan = plan_tensor_track(l_max=c.l_max, parity=c.parity, num_layers=c.num_layers)
        self.tensor_embedding = TensorEmbedding(
            sh_irreps=sh_irreps,
            irreps_first=plan[0][0],
            num_channels=c.num_tensor_features,
            num_scalar_features=c.num_scalar_features,
            num_species=n_species,
            activation=c.activation,
        )
        self.layers = torch.nn.ModuleList(
            AllegroLayer(
                irreps_in=irreps_in,
                irreps_env=sh_irreps,
                irreps_out=irreps_out,
                num_channels=c.num_tensor_features,
                num_scalar_features=c.num_scalar_features,
                latent_hidden=c.latent_mlp_hidden,
                activation=c.activation,
                num_species=n_species,
                next_env=index < c.num_layers - 1,
                avg_num_neighbors=c.avg_num_neighbors,
                moe=c.moe,
            )
            for index, (irreps_in, irreps_out) in enumerate(plan)
        )
        self.readout = make_mlp(
            c.num_scalar_features, 1, hidden=c.readout_mlp_hidden, activation=c.activation, num_species=n_species,
            moe=c.moe, role="readout",
        )
        self.edge_norm = edge_sum_norm(c.avg_num_neighbors)
        self.scale_shift = PerSpeciesScaleShift(n_species)
        numbers = torch.tensor([atomic_numbers[s] if s in atomic_numbers else -1 for s in species])
        if bool((numbers < 0).any()):
            raise ValueError(f"unknown chemical symbols in species {list(species)}")
        self.register_buffer("atomic_numbers", numbers, persistent=False)
        self.repulsion = ZBLRepulsion(c.repulsion, numbers) if c.repulsion.enabled else None
        self.moe_layers = tuple(m for _, m in moe_modules(self))  # not submodules: already registered above

    @property
    def r_max(self) -> float:
        """Cutoff radius, A."""
        return float(self.config.r_max)

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_shift.scales.dtype

    def set_scale_shift(self, *, scales: Sequence[float], shifts: Sequence[float]) -> None:
        """Per-species energy scales and shifts (eV), in the order of :attr:`species`."""
        self.scale_shift.set(scales=scales, shifts=shifts)

    def edge_outputs(
        self,
        vectors: torch.Tensor,
        species_centre: torch.Tensor,
        species_neighbor: torch.Tensor,
        layout: EdgeLayout,
        routing: RoutingContext | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge energies ``(n_edges,)`` (before normalisation and scale) and final edge scalars ``(n_edges, F)``.

        ``routing``: the evaluation's context for the MoE layers (they add their records to it).
        """
        lengths = torch.linalg.vector_norm(vectors, dim=1)  # [n_edges]
        envelope = self.envelope(lengths).unsqueeze(1)  # [n_edges, 1]
        basis = self.radial(lengths) * envelope  # [n_edges, n_basis]
        scalars = self.two_body(basis, species_centre, species_neighbor)  # [n_edges, F]
        sh, first, env_weights = self.tensor_embedding(vectors, scalars, envelope, species_centre, layout)
        operator = None
        for layer in self.layers:
            scalars, operator, env_weights = layer(
                scalars, operator, env_weights, sh, first, envelope, species_centre, layout, routing
            )
        energy = self.readout(scalars, species_centre, routing).squeeze(1) * envelope.squeeze(1)  # [n_edges]
        return energy, scalars

    def atomic_outputs(
        self,
        batch: dict[str, torch.Tensor],
        *,
        positions: torch.Tensor | None = None,
        strain: torch.Tensor | None = None,
        centers: torch.Tensor | Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-atom energies and descriptors, without derivatives.

        Parameters
        ----------
        batch : dict
            Keys of :mod:`pipeline.data.keys` (structure and graph).
        positions : (n_atoms, 3) tensor, optional
            Positions to use instead of ``batch["positions"]`` (e.g. requiring grad).
        strain : (n_structures, 3, 3) tensor, optional
            Strain applied to every edge vector (for the stress).
        centers : bool mask (n_atoms,) or index tensor, optional
            Evaluate only these centre atoms.

        Returns
        -------
        dict with :data:`keys.PER_ATOM_ENERGY` ``(n_atoms,)`` (0 for non-centres),
        :data:`keys.DESCRIPTORS` ``(n_atoms, F)`` and :data:`keys.CENTER_MASK` ``(n_atoms,)``; with MoE
        layers also this evaluation's routing (:func:`pipeline.models.moe.routing_outputs`).
        """
        dtype = self.dtype
        pos = batch[K.POSITIONS].to(dtype) if positions is None else positions
        n_atoms = pos.shape[0]
        species = batch[K.SPECIES]
        if K.ATOMIC_NUMBERS in batch and not torch.equal(
            self.atomic_numbers.index_select(0, species), batch[K.ATOMIC_NUMBERS]
        ):
            raise ValueError(
                f"the batch's species indices do not match its atomic numbers for this model's species "
                f"{list(self.species)}: build the batch with collate(..., species=model.species)"
            )
        mask = centre_mask(centers, n_atoms, pos.device)
        edge_index, shifts = centre_edges(batch[K.EDGE_INDEX], batch[K.EDGE_CELL_SHIFT], mask)
        vectors = edge_vectors(pos, batch[K.CELL], batch[K.BATCH], edge_index, shifts, strain)  # [n_edges, 3]
        # pairs at or beyond r_max contribute exactly nothing (the envelope is zero there): drop them, so
        # a graph built with a larger cutoff (a Verlet skin, another expert's cutoff) costs no more
        inside = torch.linalg.vector_norm(vectors.detach(), dim=1) < self.r_max
        if not bool(inside.all()):
            edge_index, vectors = edge_index[:, inside], vectors[inside]
        if mask is None:
            centre_atoms, centre, n_centres = None, edge_index[0], n_atoms
        else:
            centre_atoms = torch.nonzero(mask).squeeze(1)  # [n_centres]
            compact = torch.cumsum(mask, 0) - 1  # [n_atoms] -> compact centre index
            centre, n_centres = compact.index_select(0, edge_index[0]), int(centre_atoms.numel())
        layout = EdgeLayout(centre, n_centres=n_centres)
        n_scalar = self.config.num_scalar_features
        routing = None
        if layout.n_edges > 0:
            species_centre = species.index_select(0, edge_index[0])
            species_neighbor = species.index_select(0, edge_index[1])
            if self.moe_layers:
                routing = self._routing_context(batch, species, layout, centre_atoms)
            edge_energy, scalars = self.edge_outputs(vectors, species_centre, species_neighbor, layout, routing)
            energy = layout.sum_to_centres(edge_energy.unsqueeze(1)).squeeze(1) * self.edge_norm  # [n_centres]
            descriptors = layout.sum_to_centres(scalars) * self.edge_norm  # [n_centres, F]
        else:
            energy = pos.new_zeros(n_centres) + 0.0 * vectors.sum()
            descriptors = pos.new_zeros(n_centres, n_scalar)
        species_c = species if centre_atoms is None else species.index_select(0, centre_atoms)
        energy = self.scale_shift(energy, species_c)
        if self.repulsion is not None and layout.n_edges > 0:
            energy = energy + self.repulsion.centre_energies(vectors, edge_index, centre, n_centres, species)
        if centre_atoms is not None:
            energy = pos.new_zeros(n_atoms).index_copy(0, centre_atoms, energy)
            descriptors = pos.new_zeros(n_atoms, n_scalar).index_copy(0, centre_atoms, descriptors)
            full_mask = mask
        else:
            full_mask = torch.ones(n_atoms, dtype=torch.bool, device=pos.device)
        out = {K.PER_ATOM_ENERGY: energy, K.DESCRIPTORS: descriptors, K.CENTER_MASK: full_mask}
        if self.moe_layers:
            out.update(routing_outputs(self.moe_layers, routing, energy, len(self.species)))
        return out

    def _routing_context(
        self, batch: dict[str, torch.Tensor], species: torch.Tensor, layout: EdgeLayout, centre_atoms: torch.Tensor | None
    ) -> RoutingContext:
        """Per-centre species and structure, and each structure's composition (over all its atoms)."""
        structure = batch[K.BATCH]
        n_structures = int(batch[K.CELL].shape[0])
        one_hot = torch.nn.functional.one_hot(species, len(self.species)).to(self.dtype)  # [n_atoms, n_species]
        counts = one_hot.new_zeros(n_structures, len(self.species)).index_add(0, structure, one_hot)
        composition = counts / counts.sum(1, keepdim=True).clamp(min=1.0)  # [n_structures, n_species]
        if centre_atoms is not None:
            species, structure = species.index_select(0, centre_atoms), structure.index_select(0, centre_atoms)
        return RoutingContext(centre=layout.centre, n_centres=layout.n_centres, centre_species=species,
                              centre_structure=structure, composition=composition, edge_norm=float(self.edge_norm))

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        centers: torch.Tensor | Sequence[int] | None = None,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energies (total and per atom), forces, optionally stress and virial, and per-atom descriptors.

        The call of the :class:`~pipeline.models.contract.Potential` contract. Returns a new dict:
        :data:`keys.ENERGY` ``(n_structures,)`` eV, :data:`keys.PER_ATOM_ENERGY` ``(n_atoms,)``,
        :data:`keys.FORCES` ``(n_atoms, 3)`` eV/A (if ``compute_forces``), :data:`keys.STRESS`
        ``(n_structures, 3, 3)`` eV/A^3 and ``virial`` ``(n_structures, 3, 3)`` eV (if
        ``compute_stress``), :data:`keys.DESCRIPTORS` ``(n_atoms, F)``, :data:`keys.CENTER_MASK`, and
        the routing outputs of MoE layers. With ``centers``, energies are those of the centre atoms only
        and forces/stress their derivatives. ``create_graph`` (default: ``self.training``) keeps the
        derivative graph for training.
        """
        return evaluate_with_derivatives(
            lambda pos, strain: self.atomic_outputs(batch, positions=pos, strain=strain, centers=centers),
            batch,
            dtype=self.dtype,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=self.training if create_graph is None else create_graph,
        )

    def extra_repr(self) -> str:
        return f"species={list(self.species)}, r_max={self.r_max}"


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(
    config: ExpertConfig | dict,
    species: Sequence[str],
    *,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> AllegroModel:
    """Build an :class:`AllegroModel` in ``dtype`` (float32 or float64) with reproducible initial weights.

    ``config`` may be an :class:`ExpertConfig` or its ``dataclasses.asdict`` form. The global
    random state is left untouched when ``seed`` is given.
    """
    if isinstance(config, dict):
        config = expert_config_from_dict(config)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    with _default_dtype(dtype), torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return AllegroModel(config, species)


def expert_config_from_dict(values: dict) -> ExpertConfig:
    """:class:`ExpertConfig` from a plain dict (a checkpoint's ``config``), through the configuration's own
    builder (:func:`pipeline.config.expert_config`: the schema's expert definition; unknown keys raise).

    A dict without ``moe`` (checkpoints written before MoE layers existed) gets the dense default; one
    without ``repulsion`` (written before the repulsion prior existed) gets the prior switched off, so an
    old checkpoint keeps the energies it was trained with.
    """
    values = dict(values)
    values.setdefault("repulsion", {"enabled": False})
    return expert_config(values, where="checkpoint")
