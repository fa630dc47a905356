"""Channel-wise Clebsch-Gordan tensor products of the Allegro tensor track, and their irreps plan.

Each of the ``U`` channels of an edge carries one copy of every irrep in ``irreps_in1`` (multiplicity
one per channel, "strided" layout). Channel u of the edge is coupled only with channel u of its
centre's environment embedding (the e3nn ``"uuu"`` connection), one learned weight per channel and
path:

    out[u, k] = sum_{p, i, j} w[u, p] C_p[i, j, k] x1[u, i] x2[u, j]

``C_p`` are e3nn's Wigner 3j symbols times sqrt(2 l_out + 1) (component normalisation) divided by
sqrt(number of paths into the output irrep). The environment ``x2`` is a per-centre quantity, so
the weights, Wigner symbols and ``x2`` are first contracted once per centre into a
``(dim_in1, dim_out)`` matrix per channel (:meth:`ChannelwiseTensorProduct.centre_operator`). The
model only uses these operators (see :mod:`pipeline.models.layers`); :meth:`forward` applies one to
explicit edge features held in a padded ``(n_centres, U, K, dim)`` layout (K = the largest
neighbour count), as a reference and for tests.

>>> from e3nn import o3
>>> tp = ChannelwiseTensorProduct(
...     irreps_in1=o3.Irreps("0e+1o"), irreps_in2=o3.Irreps("0e+1o"), irreps_out=o3.Irreps("0e"), num_channels=4)
>>> tp(torch.randn(2, 4, 5, 4), torch.randn(2, 4, 4)).shape
torch.Size([2, 4, 5, 1])
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

SCALAR = o3.Irrep("0e")


def _couples(ir1: o3.Irrep, ir2: o3.Irrep, ir_out: o3.Irrep) -> bool:
    return ir_out in list(ir1 * ir2)


def plan_tensor_track(
    *, l_max: int, parity: bool, num_layers: int
) -> tuple[o3.Irreps, list[tuple[o3.Irreps, o3.Irreps]]]:
    """Irreps of the spherical harmonics and of each layer's tensor-product input and output.

    Layer inputs start from the spherical harmonics up to ``l_max`` (parity (-1)^l); intermediate
    outputs may hold every irrep up to ``l_max`` of both parities when ``parity`` is True, else only
    the spherical-harmonic irreps; the last layer outputs only scalars (0e). Irreps that cannot
    reach the final scalars are pruned backwards. Every irreps object has multiplicity one per
    irrep and starts with 0e.

    Returns
    -------
    sh_irreps : o3.Irreps
        ``o3.Irreps.spherical_harmonics(l_max)``: the edge tensor basis and environment irreps.
    layers : list of (irreps_in, irreps_out)
        One pair per layer.
    """
    if l_max < 1:
        raise ValueError(f"l_max must be >= 1 for a tensor track, got {l_max}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    sh = o3.Irreps.spherical_harmonics(l_max)
    env = [ir for _, ir in sh]
    if parity:
        allowed = [o3.Irrep(l, p) for l in range(l_max + 1) for p in (1, -1)]
    else:
        allowed = list(env)
    chain = [list(env)]
    for layer in range(num_layers):
        target = [SCALAR] if layer == num_layers - 1 else allowed
        chain.append([c for c in target if any(_couples(a, b, c) for a in chain[-1] for b in env)])
    pruned = [chain[-1]]
    for irreps in reversed(chain[:-1]):
        needed = pruned[-1]
        pruned.append([a for a in irreps if any(_couples(a, b, c) for b in env for c in needed)])
    pruned.reverse()
    as_irreps = [o3.Irreps([(1, ir) for ir in irs]) for irs in pruned]
    for irreps in as_irreps:
        if len(irreps) == 0 or irreps[0].ir != SCALAR:
            raise RuntimeError(f"tensor-track irreps {irreps} do not start with 0e")
    return sh, [(as_irreps[i], as_irreps[i + 1]) for i in range(num_layers)]


class ChannelwiseTensorProduct(torch.nn.Module):
    """Weighted channel-wise ("uuu") tensor product of edge features with a per-centre tensor.

    Parameters
    ----------
    irreps_in1 : o3.Irreps
        Irreps of one channel of the edge features (multiplicity one each).
    irreps_in2 : o3.Irreps
        Irreps of one channel of the centre's environment embedding.
    irreps_out : o3.Irreps
        Irreps of one output channel; every output irrep reachable from the inputs gets all its
        paths.
    num_channels : int
        Number of channels U.

    Shapes: ``x1`` ``(n_centres, U, K, irreps_in1.dim)``, ``x2`` ``(n_centres, U, irreps_in2.dim)``
    -> ``(n_centres, U, K, irreps_out.dim)``.
    """

    def __init__(
        self, *, irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, irreps_out: o3.Irreps, num_channels: int
    ) -> None:
        super().__init__()
        self.irreps_in1 = o3.Irreps(irreps_in1)
        self.irreps_in2 = o3.Irreps(irreps_in2)
        self.irreps_out = o3.Irreps(irreps_out)
        named = (("irreps_in1", self.irreps_in1), ("irreps_in2", self.irreps_in2), ("irreps_out", self.irreps_out))
        for name, irreps in named:
            if any(mul != 1 for mul, _ in irreps):
                raise ValueError(f"{name} must have multiplicity 1 per irrep (channels are separate), got {irreps}")
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.num_channels = int(num_channels)

        paths = [
            (a, b, c)
            for c, (_, ir_out) in enumerate(self.irreps_out)
            for a, (_, ir1) in enumerate(self.irreps_in1)
            for b, (_, ir2) in enumerate(self.irreps_in2)
            if _couples(ir1, ir2, ir_out)
        ]
        unreachable = sorted({c for c in range(len(self.irreps_out))} - {c for _, _, c in paths})
        if unreachable:
            raise ValueError(
                f"output irreps {[str(self.irreps_out[c].ir) for c in unreachable]} cannot be reached from "
                f"{self.irreps_in1} x {self.irreps_in2}"
            )
        self.paths = tuple(paths)
        fan_in = {c: sum(1 for _, _, cc in paths if cc == c) for c in range(len(self.irreps_out))}
        s1, s2, so = self.irreps_in1.slices(), self.irreps_in2.slices(), self.irreps_out.slices()
        shape = (len(paths), self.irreps_in1.dim, self.irreps_in2.dim, self.irreps_out.dim)
        cg = torch.zeros(shape, dtype=torch.float64)
        for p, (a, b, c) in enumerate(paths):
            l1, l2, lo = self.irreps_in1[a].ir.l, self.irreps_in2[b].ir.l, self.irreps_out[c].ir.l
            norm = math.sqrt((2 * lo + 1) / fan_in[c])
            cg[p, s1[a], s2[b], so[c]] = o3.wigner_3j(l1, l2, lo, dtype=torch.float64) * norm
        # kept in float64 and cast on use, so a module converted between dtypes stays exact to round-off
        self._cg64 = cg
        self._cg_cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.weight = torch.nn.Parameter(torch.randn(self.num_channels, len(paths)))

    def coupling(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Normalised Wigner 3j symbols per path, ``(n_paths, dim_in1, dim_in2, dim_out)``."""
        key = (dtype, device)
        if key not in self._cg_cache:
            self._cg_cache[key] = self._cg64.to(device=device, dtype=dtype)
        return self._cg_cache[key]

    def centre_operator(self, x2: torch.Tensor) -> torch.Tensor:
        """Contract weights, Wigner symbols and ``x2`` into ``(n_centres, U, dim_in1, dim_out)``."""
        cg = self.coupling(self.weight.dtype, self.weight.device)
        w_cg = torch.einsum("up,pijk->ujik", self.weight, cg)  # [U, dim2, dim1, dim_out]
        return torch.einsum("nuj,ujik->nuik", x2, w_cg)  # [n_centres, U, dim1, dim_out]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        operator = self.centre_operator(x2)  # [n_centres, U, dim1, dim_out]
        if self.irreps_out.dim == 1:
            # one scalar output: a dot product per edge and channel, cheaper elementwise than as a
            # batched matmul with an inner size of one (especially its backward)
            return (x1 * operator.squeeze(-1).unsqueeze(2)).sum(-1, keepdim=True)  # [n_centres, U, K, 1]
        return torch.matmul(x1, operator)  # [n_centres, U, K, dim_out]

    def extra_repr(self) -> str:
        return (
            f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | {self.num_channels} channels | "
            f"{len(self.paths)} paths"
        )
