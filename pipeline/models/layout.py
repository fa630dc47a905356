"""Edge layouts: the flat edge list and the padded per-centre layout used by the tensor track.

Edges sorted by centre are numbered ``0..n_edges-1``. The padded layout puts edge ``e`` of centre
``c`` (its ``s``-th edge) at ``[c, s]`` of an ``(n_centres, K, ...)`` array, ``K`` being the
largest neighbour count; empty slots hold zeros. Sums over a centre's edges become sums over
``K`` or batched matrix products, and per-centre quantities broadcast to edges without gathers.

>>> import torch
>>> layout = EdgeLayout(torch.tensor([0, 0, 1]), n_centres=3)
>>> layout.max_neighbors, layout.to_padded(torch.tensor([1.0, 2.0, 3.0])).tolist()
(2, [[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
"""

from __future__ import annotations

import torch


class EdgeLayout:
    """Index bookkeeping between flat edges (sorted by centre) and the padded per-centre layout.

    Parameters
    ----------
    centre : (n_edges,) int64 tensor
        Compact centre index (``0..n_centres-1``) of every edge, non-decreasing.
    n_centres : int
        Number of centres (rows of the padded layout), including centres without edges.
    """

    def __init__(self, centre: torch.Tensor, *, n_centres: int) -> None:
        self.centre = centre
        self.n_centres = int(n_centres)
        self.n_edges = int(centre.shape[0])
        counts = torch.bincount(centre, minlength=self.n_centres)  # [n_centres]
        self.counts = counts
        self.max_neighbors = int(counts.max()) if self.n_edges > 0 else 0
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(self.n_edges, device=centre.device) - start.index_select(0, centre)
        self.flat = centre * self.max_neighbors + slot  # [n_edges] position in the flattened padded layout

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """``(n_edges, *rest)`` -> ``(n_centres, K, *rest)``, empty slots zero."""
        rest = x.shape[1:]
        out = x.new_zeros((self.n_centres * self.max_neighbors, *rest)).index_copy(0, self.flat, x)
        return out.view(self.n_centres, self.max_neighbors, *rest)

    def from_padded(self, x: torch.Tensor) -> torch.Tensor:
        """``(n_centres, K, *rest)`` -> ``(n_edges, *rest)``."""
        rest = x.shape[2:]
        return x.reshape(self.n_centres * self.max_neighbors, *rest).index_select(0, self.flat)

    def sum_to_centres(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``(n_edges, *rest)`` over each centre's edges -> ``(n_centres, *rest)``."""
        return x.new_zeros((self.n_centres, *x.shape[1:])).index_add(0, self.centre, x)
