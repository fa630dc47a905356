"""Edge-length encodings: a Bessel radial basis and the polynomial cutoff envelope.

The envelope (Klicpera et al., DimeNet, 2020) is

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2),   x = r / r_max,

for x < 1 and 0 beyond; u(1) = u'(1) = u''(1) = 0, so anything multiplied by it is twice
continuously differentiable as a neighbour crosses r_max.

>>> import torch
>>> env = PolynomialEnvelope(r_max=5.0, p=6)
>>> env(torch.tensor([0.0, 5.0, 6.0])).tolist()
[1.0, 0.0, 0.0]
"""

from __future__ import annotations

import math

import torch


class PolynomialEnvelope(torch.nn.Module):
    """Smooth cutoff u(r / r_max) with p >= 2.

    Parameters
    ----------
    r_max : float
        Cutoff radius, A.
    p : int
        Exponent; the envelope and its first two derivatives vanish at r_max.
    """

    def __init__(self, *, r_max: float, p: int = 6) -> None:
        super().__init__()
        if r_max <= 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        if p < 2:
            raise ValueError(f"envelope exponent p must be >= 2, got {p}")
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``r`` of any shape (A) -> envelope of the same shape."""
        p = float(self.p)
        x = r / self.r_max
        xp = x.pow(self.p)
        u = 1.0 - 0.5 * (p + 1.0) * (p + 2.0) * xp + p * (p + 2.0) * xp * x - 0.5 * p * (p + 1.0) * xp * x * x
        return torch.where(x < 1.0, u, torch.zeros_like(u))

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, p={self.p}"


class BesselBasis(torch.nn.Module):
    """Radial Bessel functions sin(n pi x) / x, x = r / r_max, n = 1..num_basis (dimensionless, O(1)).

    Parameters
    ----------
    r_max : float
        Cutoff radius, A.
    num_basis : int
        Number of functions (8 in Allegro).

    Shapes: ``(n_edges,)`` -> ``(n_edges, num_basis)``.
    """

    def __init__(self, *, r_max: float, num_basis: int = 8) -> None:
        super().__init__()
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        self.r_max = float(r_max)
        self.num_basis = int(num_basis)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = (r / self.r_max).unsqueeze(-1)  # [n_edges, 1]
        n_pi = torch.arange(1, self.num_basis + 1, dtype=r.dtype, device=r.device) * math.pi  # [num_basis]
        return torch.sin(n_pi * x) / x  # [n_edges, num_basis]

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, num_basis={self.num_basis}"
