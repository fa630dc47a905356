"""One Allegro layer: environment embedding, channel-wise tensor product, latent scalar update.

For every centre i and channel u, the environment embedding is

    V_i[u] = (1 / sqrt(avg_num_neighbors)) * sum_{j in N(i)} w_ij[u, l] Y_ij

with per-channel, per-irrep weights w_ij from the edge scalars (already multiplied by the cutoff
envelope) and the spherical harmonics Y_ij. Each edge's tensor features are coupled channel-wise
with the environment of their centre (:class:`ChannelwiseTensorProduct`); the scalar (0e) outputs
and the previous edge scalars go through the latent MLP, whose output (times the envelope) updates
the edge scalars residually, x <- (x + h) / sqrt(2), and gives the next layer's environment
weights.

Evaluation order. The tensor product of layer l maps an edge's tensor x_l linearly to
x_{l+1} = x_l M_l(V_i), with a matrix M_l per centre and channel (weights, Wigner symbols and the
environment contracted once per centre). Tensors are never passed through a nonlinearity, so
x_{l+1} = x_1 M_1 ... M_l, and the scalars the latent MLP needs are x_1 (M_1 ... M_l)[:, 0]. The
layers therefore carry the per-centre operator product instead of per-edge tensors, and contract
it with the factorised first tensor (:meth:`FactorisedTensor.contract`): the result is the
same tensor product, in an order that never forms an (edges x channels x irreps dim) array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from e3nn import o3

from pipeline.config import MoEConfig
from pipeline.models.embedding import FactorisedTensor
from pipeline.models.layout import EdgeLayout
from pipeline.models.mlp import make_mlp
from pipeline.models.tensor_product import ChannelwiseTensorProduct

if TYPE_CHECKING:
    from pipeline.models.moe import RoutingContext


class AllegroLayer(torch.nn.Module):
    """One tensor-product layer with its latent MLP.

    Parameters
    ----------
    irreps_in : o3.Irreps
        Irreps of one channel of the incoming edge tensor features.
    irreps_env : o3.Irreps
        Irreps of the environment embedding (the spherical harmonics).
    irreps_out : o3.Irreps
        Irreps of one channel of the outgoing tensor features (0e first).
    num_channels : int
        Tensor channels U.
    num_scalar_features : int
        Edge scalar size F.
    latent_hidden : sequence of int
        Hidden widths of the latent MLP.
    activation : str
        MLP nonlinearity.
    num_species : int
        Number of species (routing input of the latent MLP).
    next_env : bool
        Whether to produce environment weights for a following layer.
    avg_num_neighbors : float
        Normalisation of the environment sum.
    moe : MoEConfig, optional
        Mixture-of-experts settings (the latent MLP becomes routed if ``"latent"`` is in ``moe.layers``).

    Shapes in :meth:`forward`: ``scalars`` ``(n_edges, F)``; ``operator`` (product of the previous
    layers' per-centre maps, ``None`` in the first layer) ``(n_centres, U, first_dim, irreps_in.dim)``;
    ``env_weights`` ``(n_edges, U * len(irreps_env))``; ``sh`` ``(n_centres, K, irreps_env.dim)``;
    ``first`` the first tensor features (:class:`FactorisedTensor`);
    ``envelope`` ``(n_edges, 1)``; ``species_centre`` ``(n_edges,)``; ``routing`` the evaluation's
    :class:`~pipeline.models.moe.RoutingContext` (``None`` for a dense model). Returns the updated scalars,
    the operator product ``(n_centres, U, first_dim, irreps_out.dim)`` and the next environment
    weights (``None`` when ``next_env`` is False).
    """

    def __init__(
        self,
        *,
        irreps_in: o3.Irreps,
        irreps_env: o3.Irreps,
        irreps_out: o3.Irreps,
        num_channels: int,
        num_scalar_features: int,
        latent_hidden: Sequence[int],
        activation: str,
        num_species: int,
        next_env: bool,
        avg_num_neighbors: float,
        moe: MoEConfig | None = None,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_env = o3.Irreps(irreps_env)
        self.irreps_out = o3.Irreps(irreps_out)
        if self.irreps_out[0].ir != o3.Irrep("0e"):
            raise ValueError(f"irreps_out must start with 0e, got {self.irreps_out}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.num_channels = int(num_channels)
        self.num_scalar_features = int(num_scalar_features)
        self.n_env_irreps = len(self.irreps_env)
        self.n_next_env = self.num_channels * self.n_env_irreps if next_env else 0
        self.env_norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.tp = ChannelwiseTensorProduct(
            irreps_in1=self.irreps_in, irreps_in2=self.irreps_env, irreps_out=self.irreps_out, num_channels=num_channels
        )
        self.latent = make_mlp(
            self.num_scalar_features + self.num_channels,
            self.num_scalar_features + self.n_next_env,
            hidden=latent_hidden,
            activation=activation,
            num_species=num_species,
            moe=moe,
            role="latent",
        )
        self.env_slices = tuple(self.irreps_env.slices())

    def environment(self, env_weights: torch.Tensor, sh: torch.Tensor, layout: EdgeLayout) -> torch.Tensor:
        """Normalised weighted sum of the spherical harmonics over each centre's edges -> ``(n_centres, U, dim)``."""
        w = layout.to_padded(env_weights)  # [n_centres, K, U * n_irreps]
        per_irrep = torch.bmm(w.transpose(1, 2), sh)  # [n_centres, U * n_irreps, dim]
        per_irrep = per_irrep.view(layout.n_centres, self.num_channels, self.n_env_irreps, self.irreps_env.dim)
        env = torch.cat([per_irrep[:, :, r, s] for r, s in enumerate(self.env_slices)], dim=-1)  # [n_centres, U, dim]
        return env * self.env_norm

    def forward(
        self,
        scalars: torch.Tensor,
        operator: torch.Tensor | None,
        env_weights: torch.Tensor,
        sh: torch.Tensor,
        first: FactorisedTensor,
        envelope: torch.Tensor,
        species_centre: torch.Tensor,
        layout: EdgeLayout,
        routing: RoutingContext | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        env = self.environment(env_weights, sh, layout)  # [n_centres, U, env_dim]
        step = self.tp.centre_operator(env)  # [n_centres, U, in_dim, out_dim]
        operator = step if operator is None else torch.matmul(operator, step)  # [n_centres, U, first_dim, out_dim]
        tp_scalars = layout.from_padded(first.contract(operator[..., 0]))  # [n_edges, U]
        h = self.latent(torch.cat([scalars, tp_scalars], dim=1), species_centre, routing)
        h = h * envelope  # [n_edges, F + next env]
        if self.n_next_env:
            update, next_env = torch.split(h, [self.num_scalar_features, self.n_next_env], dim=1)
        else:
            update, next_env = h, None
        scalars = (scalars + update) * (1.0 / math.sqrt(2.0))
        return scalars, operator, next_env
