"""The one factory for the scalar MLPs of the Allegro expert.

Every scalar MLP of the model (two-body embedding, projections, latent MLPs, readout) is built by
:func:`make_mlp`, and every MLP is called as ``mlp(x, species)`` or ``mlp(x, species, routing)``,
where ``species`` is the species index of each row's centre atom and ``routing`` the evaluation's
:class:`~pipeline.models.moe.RoutingContext` (or ``None``). The dense :class:`ScalarMLP` ignores both;
they are there so that a mixture-of-experts MLP can replace the dense one here, in one place, without
touching the model.

>>> import torch
>>> mlp = make_mlp(4, 2, hidden=(8,), activation="silu", num_species=3)
>>> mlp(torch.randn(5, 4), torch.zeros(5, dtype=torch.long)).shape
torch.Size([5, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pipeline.config import MoEConfig

ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "silu": torch.nn.SiLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
    "mish": torch.nn.Mish,
}


class ScalarMLP(torch.nn.Module):
    """Dense bias-free MLP on per-row scalar features.

    Weights are initialised N(0, gain^2 / fan_in) (gain 1 on the first layer, sqrt(2) after an
    activation), so unit-variance inputs give outputs of order one. Without biases and with
    activations that map 0 to 0, a zero input row gives a zero output row.

    Parameters
    ----------
    in_dim, out_dim : int
        Feature sizes.
    hidden : sequence of int
        Hidden layer widths; empty = one linear map.
    activation : str
        A key of :data:`ACTIVATIONS`.

    Shapes: ``x`` ``(n, in_dim)``, ``species`` ``(n,)`` (unused; so is ``routing``) -> ``(n, out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        dims = [int(in_dim), *(int(h) for h in hidden), int(out_dim)]
        if min(dims) < 1:
            raise ValueError(f"MLP layer sizes must be positive, got {dims}")
        self.dims = tuple(dims)
        self.weights = torch.nn.ParameterList()
        for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
            gain = 1.0 if layer == 0 else math.sqrt(2.0)
            self.weights.append(torch.nn.Parameter(torch.randn(fan_out, fan_in) * (gain / math.sqrt(fan_in))))
        self.act = ACTIVATIONS[activation]()
        self.in_dim, self.out_dim = dims[0], dims[-1]

    def forward(self, x: torch.Tensor, species: torch.Tensor | None = None, routing: object = None) -> torch.Tensor:
        last = len(self.weights) - 1
        for layer, weight in enumerate(self.weights):
            x = torch.nn.functional.linear(x, weight)  # [n, dims[layer + 1]]
            if layer < last:
                x = self.act(x)
        return x

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


def make_mlp(
    in_dim: int,
    out_dim: int,
    *,
    hidden: Sequence[int] = (),
    activation: str = "silu",
    num_species: int,
    moe: MoEConfig | None = None,
    role: str | None = None,
) -> torch.nn.Module:
    """Build a scalar MLP called as ``mlp(x, species)``; the single place MLPs are made.

    Parameters
    ----------
    in_dim, out_dim : int
        Input and output feature sizes.
    hidden : sequence of int
        Hidden widths (empty = linear).
    activation : str
        Nonlinearity name, one of :data:`ACTIVATIONS`.
    num_species : int
        Number of species the routing input may take (used by routed MLPs; the dense MLP
        ignores it).
    moe : MoEConfig, optional
        Mixture-of-experts settings of the expert; when enabled and ``role`` is one of
        ``moe.layers``, a routed :class:`~pipeline.models.moe.MoEMLP` is built instead.
    role : str, optional
        Which MLP of the model this is (``latent``, ``readout``, ...).
    """
    if num_species < 1:
        raise ValueError(f"num_species must be >= 1, got {num_species}")
    if moe is not None and moe.enabled and role in moe.layers:
        from pipeline.models.moe import MoEMLP  # the MoE module builds on this one

        return MoEMLP(in_dim, out_dim, hidden=hidden, activation=activation, num_species=num_species, moe=moe)
    return ScalarMLP(in_dim, out_dim, hidden=hidden, activation=activation)
