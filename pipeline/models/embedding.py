"""Two-body embeddings of an edge: the scalar embedding and the spherical-harmonic tensor embedding.

- :class:`TwoBodyScalarEmbedding`: the enveloped radial basis, projected linearly, times a learned
  embedding of the (centre species, neighbour species) pair, then a scalar MLP.
- :class:`TensorEmbedding`: spherical harmonics of the edge direction (e3nn, ``normalize=True``,
  component normalisation) times the cutoff envelope, computed once per evaluation, and the first
  tensor features: per channel, each irrep of the harmonics times a weight from a linear map of the
  edge scalars. The same map gives the weights of the first layer's environment embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from e3nn import o3

from pipeline.models.layout import EdgeLayout
from pipeline.models.mlp import make_mlp


class TwoBodyScalarEmbedding(torch.nn.Module):
    """Scalar edge features from the radial basis and the species of centre and neighbour.

    Parameters
    ----------
    num_species : int
        Number of species S.
    num_basis : int
        Size of the (enveloped) radial basis.
    num_features : int
        Output size F.
    hidden : sequence of int
        Hidden widths of the two-body MLP.
    activation : str
        MLP nonlinearity.

    Shapes: ``basis`` ``(n_edges, num_basis)``, ``species_centre``/``species_neighbor``
    ``(n_edges,)`` -> ``(n_edges, F)``.
    """

    def __init__(
        self, *, num_species: int, num_basis: int, num_features: int, hidden: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        self.num_species = int(num_species)
        self.radial = make_mlp(num_basis, num_features, hidden=(), activation=activation, num_species=num_species)
        self.pair_embedding = torch.nn.Parameter(torch.randn(num_species * num_species, num_features))
        self.mlp = make_mlp(num_features, num_features, hidden=hidden, activation=activation, num_species=num_species)
        self.num_features = int(num_features)

    def forward(
        self, basis: torch.Tensor, species_centre: torch.Tensor, species_neighbor: torch.Tensor
    ) -> torch.Tensor:
        pair = species_centre * self.num_species + species_neighbor  # [n_edges]
        h = self.radial(basis, species_centre) * self.pair_embedding.index_select(0, pair)  # [n_edges, F]
        return self.mlp(h, species_centre)  # [n_edges, F]


class TensorEmbedding(torch.nn.Module):
    """Spherical harmonics of edge directions and the weighted first tensor features.

    Parameters
    ----------
    sh_irreps : o3.Irreps
        Spherical-harmonic irreps (``o3.Irreps.spherical_harmonics(l_max)``); also the irreps of
        the environment embeddings.
    irreps_first : o3.Irreps
        Irreps of the first layer's tensor input, a subset of ``sh_irreps``.
    num_channels : int
        Tensor channels U.
    num_scalar_features : int
        Size F of the edge scalars the weights are computed from.
    num_species : int
        Number of species (routing input of the projection).

    Outputs of :meth:`forward`: enveloped harmonics, padded, ``(n_centres, K, sh_irreps.dim)``; the
    first tensor features as a :class:`FactorisedTensor` (per-irrep weights times harmonics);
    environment weights of the first layer ``(n_edges, U * len(sh_irreps))``.
    """

    def __init__(
        self,
        *,
        sh_irreps: o3.Irreps,
        irreps_first: o3.Irreps,
        num_channels: int,
        num_scalar_features: int,
        num_species: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.sh_irreps = o3.Irreps(sh_irreps)
        self.irreps_out = o3.Irreps(irreps_first)
        sh_list = [ir for _, ir in self.sh_irreps]
        missing = [str(ir) for _, ir in self.irreps_out if ir not in sh_list]
        if missing:
            raise ValueError(f"first-layer irreps {missing} are not spherical-harmonic irreps {self.sh_irreps}")
        self.num_channels = int(num_channels)
        self.sh = o3.SphericalHarmonics(self.sh_irreps, normalize=True, normalization="component")
        n_sh = len(self.sh_irreps)
        self.n_tensor_weights = self.num_channels * len(self.irreps_out)
        self.n_env_weights = self.num_channels * n_sh
        self.projection = make_mlp(
            num_scalar_features,
            self.n_tensor_weights + self.n_env_weights,
            hidden=(),
            activation=activation,
            num_species=num_species,
        )
        # the slice of the spherical harmonics that forms each irrep of the first tensor input
        sh_slices = self.sh_irreps.slices()
        self.sh_slices = tuple(sh_slices[sh_list.index(ir)] for _, ir in self.irreps_out)
        self.first_slices = tuple(self.irreps_out.slices())

    def forward(
        self,
        edge_vectors: torch.Tensor,
        scalars: torch.Tensor,
        envelope: torch.Tensor,
        species_centre: torch.Tensor,
        layout: EdgeLayout,
    ) -> tuple[torch.Tensor, FactorisedTensor, torch.Tensor]:
        """Enveloped harmonics ``(n_centres, K, sh_dim)``, the first tensor features (factorised) and
        the first environment weights ``(n_edges, U * len(sh_irreps))``."""
        # the envelope multiplies the harmonics once, so it reaches the first tensor features and
        # every environment sum without multiplying the (wider) weights
        sh = layout.to_padded(self.sh(edge_vectors) * envelope)  # [n_centres, K, sh_dim]
        weights = self.projection(scalars, species_centre)  # [n_edges, tensor weights + env weights]
        tensor_w, env_w = torch.split(weights, [self.n_tensor_weights, self.n_env_weights], dim=1)
        tensor_w = layout.to_padded(tensor_w).view(layout.n_centres, layout.max_neighbors, -1, self.num_channels)
        first = FactorisedTensor(
            harmonics=tuple(sh[:, :, s].contiguous() for s in self.sh_slices),  # [n_centres, K, 2l+1] each
            weights=torch.unbind(tensor_w, dim=2),  # [n_centres, K, U] each
            slices=self.first_slices,
        )
        return sh, first, env_w


class FactorisedTensor:
    """Edge tensor features x[c, u, k, i] = weights[r][c, k, u] * harmonics[r][c, k, m], i = (r, m).

    The first tensor features of Allegro are, per irrep r, a per-channel weight times the
    spherical harmonics. Kept in this form, contracting them with a per-centre vector costs one
    ``(K, 2l+1) x (2l+1, U)`` matrix product per centre and irrep instead of an
    ``(edges x channels x dim)`` array.

    Parameters
    ----------
    harmonics : tuple of tensors ``(n_centres, K, 2l+1)``, one per irrep
    weights : tuple of tensors ``(n_centres, K, U)``, one per irrep
    slices : tuple of slices
        Where each irrep sits in the feature dimension.
    """

    def __init__(
        self, *, harmonics: tuple[torch.Tensor, ...], weights: tuple[torch.Tensor, ...], slices: tuple[slice, ...]
    ) -> None:
        if not len(harmonics) == len(weights) == len(slices):
            raise ValueError("harmonics, weights and slices need one entry per irrep")
        self.harmonics, self.weights, self.slices = harmonics, weights, slices

    def contract(self, vector: torch.Tensor) -> torch.Tensor:
        """``sum_i x[c, u, k, i] vector[c, u, i]``: ``vector`` ``(n_centres, U, dim)`` -> ``(n_centres, K, U)``."""
        vector_t = vector.transpose(1, 2).contiguous()  # [n_centres, dim, U]
        out = None
        for harmonics, weights, s in zip(self.harmonics, self.weights, self.slices):
            part = torch.bmm(harmonics, vector_t[:, s]) * weights  # [n_centres, K, U]
            out = part if out is None else out + part
        return out

    def materialise(self) -> torch.Tensor:
        """The features as an array ``(n_centres, U, K, dim)`` (for tests and reference evaluations)."""
        blocks = [w.transpose(1, 2).unsqueeze(-1) * h.unsqueeze(1) for h, w in zip(self.harmonics, self.weights)]
        return torch.cat(blocks, dim=-1)


def edge_sum_norm(avg_num_neighbors: float) -> float:
    """Normalisation 1/sqrt(avg_num_neighbors) of sums over a centre's edges."""
    if avg_num_neighbors <= 0:
        raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors}")
    return 1.0 / math.sqrt(avg_num_neighbors)
