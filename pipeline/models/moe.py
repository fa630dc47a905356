"""Routed mixture-of-experts scalar MLPs with shared experts (paper B of DESIGN.md section 1).

A :class:`MoEMLP` replaces a dense scalar MLP of the Allegro expert (the latent MLPs, the readout).
It holds N routed experts, S shared experts and a router; per centre atom the router gives
probabilities p over the N experts, keeps the top k and renormalises them to gates g (sum 1). Every
edge row is processed with its centre atom's routing::

    y = c * ( sum_{s < S} shared_s(x) + sum_{e in top-k} g_e expert_e(x) ),   c = 1 / sqrt(min(S, 1) + 1)

Expert kinds (``MoEConfig.expert_type``):

- ``mlp``: each routed expert is a bias-free non-linear MLP; execution is sparse: the rows routed to
  an expert are gathered, run through it and scattered back (``index_add``), so the active compute
  grows with k, not N;
- ``linear`` (MoLE, mixture of linear experts): the experts' weight matrices are mixed by the gates,
  ``W(x) = sum_e g_e W_e`` layer by layer, before one matmul per routing group. With element routing
  (or configuration routing on a fixed composition) the mixed weights are constants and
  :func:`merge_moe` folds them into dense per-species MLPs for inference (same outputs).

Router inputs (``MoEConfig.router``):

- ``element``: a learned embedding of the centre atom's species. The expert choice of an atom never
  changes as atoms move, so the energy stays as smooth as the dense model's (the default).
- ``configuration``: the mean of the species embeddings over all atoms of the atom's structure
  (a composition embedding). A supercell has the composition of its unit cell, so it routes
  identically (the energy stays size-extensive); centre-subset evaluation routes like the full one.
- ``atom``: the atom's current scalar features (the normalised sum of its edges' input rows). **The
  top-k choice switches as atoms move, so the energy jumps and the forces are discontinuous at
  switching points** (``tests/test_moe_layer.py`` measures such a jump); use it only for studies.
- ``global``: one learned routing per structure from its current features, the mean over the
  structure's centre atoms of the ``atom`` router's input, top-k like the others. **Study only: it is
  non-local** (an atom's energy depends on every atom of its structure, however far, and a centre subset
  routes by the mean over that subset, so partitioned evaluation is not additive) **and discontinuous**
  (the top-k choice of the whole structure switches as atoms move; the MoE study's path check,
  :func:`pipeline.train.stability.path_energy_jumps`, measures it).

Per-atom routing needs the centre index of each row, the atoms' species and structures: the model
builds one :class:`RoutingContext` per evaluation and passes it to its MLPs (``mlp(x, species,
routing)``). Without a context, rows are routed by the ``species`` argument alone (element routing
only) and nothing is recorded.

Routing statistics are outputs, not module state: each call of a :class:`MoEMLP` with a context adds
a :class:`RoutingRecord` to it, ``balance`` (the load-balancing loss of Switch Transformers,
``N * sum_e f_e P_e`` with f_e the fraction of top-k slots given to expert e and P_e its mean router
probability over centre atoms; 1 when balanced) and ``load`` ``(n_species, N)``, the number of
centre atoms of each species routed to each expert. The model returns them in its output dict
(:func:`routing_outputs`; keys in :mod:`pipeline.models.contract`), so the modules keep nothing
between calls and can be deep-copied at any time.

>>> import torch
>>> from pipeline.config import MoEConfig
>>> mlp = MoEMLP(4, 2, hidden=(8,), activation="silu", num_species=3, moe=MoEConfig(enabled=True))
>>> mlp(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])).shape
torch.Size([5, 2])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pipeline.config import MoEConfig
from pipeline.data import keys as K
from pipeline.models.contract import MOE_LAYER_BALANCE
from pipeline.models.mlp import ACTIVATIONS, ScalarMLP

ROUTERS = ("element", "configuration", "atom", "global")
EXPERT_TYPES = ("mlp", "linear")
MOE_ROLES = ("latent", "readout")


@dataclass
class RoutingContext:
    """Where the rows of one evaluation come from (rows = edges, sorted by centre).

    Attributes
    ----------
    centre : (n_rows,) int64
        Compact centre index of each row.
    n_centres : int
        Number of centre atoms evaluated.
    centre_species : (n_centres,) int64
        Species index of each centre atom.
    centre_structure : (n_centres,) int64
        Structure of each centre atom.
    composition : (n_structures, n_species) float
        Fraction of each species among *all* atoms of each structure.
    edge_norm : float
        Factor of the sum over a centre's rows used as the ``atom`` router's input.
    records : dict[MoEMLP, RoutingRecord]
        Filled during the evaluation: the routing of every MoE layer called with this context.
    """

    centre: torch.Tensor
    n_centres: int
    centre_species: torch.Tensor
    centre_structure: torch.Tensor
    composition: torch.Tensor
    edge_norm: float = 1.0
    records: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingRecord:
    """The routing of one MoE layer in one evaluation.

    Attributes
    ----------
    balance : 0-d tensor
        Load-balancing loss ``N * sum_e f_e P_e`` (differentiable in the router's parameters).
    load : (n_species, N) float64 tensor, CPU
        Centre atoms of each species routed to each expert (top-k slots).
    """

    balance: torch.Tensor
    load: torch.Tensor


def _widths(hidden: Sequence[int], factor: float) -> tuple[int, ...]:
    return tuple(max(1, round(h * factor)) for h in hidden)


def _init_stack(n: int, dims: Sequence[int]) -> torch.nn.ParameterList:
    """Weights ``(n, fan_out, fan_in)`` per layer, initialised like :class:`ScalarMLP`."""
    out = torch.nn.ParameterList()
    for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        gain = 1.0 if layer == 0 else math.sqrt(2.0)
        out.append(torch.nn.Parameter(torch.randn(n, fan_out, fan_in) * (gain / math.sqrt(fan_in))))
    return out


def grouped_mlp(
    x: torch.Tensor, weights: Sequence[torch.Tensor], group: torch.Tensor, act: torch.nn.Module
) -> torch.Tensor:
    """Bias-free MLP whose weights depend on the row's group.

    ``x`` ``(n, in)``, ``weights`` per layer ``(G, out, in)``, ``group`` ``(n,)`` -> ``(n, out)``. Few
    groups: one matmul per group present; many groups (per-atom routing): a gathered batched matmul.
    """
    n_groups = int(weights[0].shape[0])
    last = len(weights) - 1
    if n_groups > 64:
        h = x
        for layer, w in enumerate(weights):
            h = torch.bmm(w.index_select(0, group), h.unsqueeze(2)).squeeze(2)  # [n, out]
            if layer < last:
                h = act(h)
        return h
    out = x.new_zeros(x.shape[0], int(weights[-1].shape[1]))
    for g in torch.unique(group).tolist():
        rows = torch.nonzero(group == g).squeeze(1)
        h = x.index_select(0, rows)
        for layer, w in enumerate(weights):
            h = torch.nn.functional.linear(h, w[g])
            if layer < last:
                h = act(h)
        out = out.index_copy(0, rows, h)
    return out


class Router(torch.nn.Module):
    """Router logits per routing group, and the group of every token (centre atom) and row.

    Parameters
    ----------
    mode : str
        One of :data:`ROUTERS`.
    in_dim : int
        Row feature size (input of the ``atom`` and ``global`` routers).
    num_species, num_experts, embedding_dim : int
    """

    def __init__(self, *, mode: str, in_dim: int, num_species: int, num_experts: int, embedding_dim: int) -> None:
        super().__init__()
        if mode not in ROUTERS:
            raise ValueError(f"unknown MoE router {mode!r}; valid: {list(ROUTERS)}")
        self.mode = mode
        if mode in ("atom", "global"):
            self.proj = torch.nn.Linear(in_dim, num_experts, bias=False)
        else:
            self.embedding = torch.nn.Parameter(torch.randn(num_species, embedding_dim))
            self.proj = torch.nn.Linear(embedding_dim, num_experts, bias=False)
        with torch.no_grad():
            self.proj.weight.mul_(0.1)  # near-uniform probabilities at initialisation

    def forward(
        self, x: torch.Tensor, species: torch.Tensor, ctx: RoutingContext | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(G, N)``, group of each token ``(n_tokens,)``, species of each token, group of each row."""
        if ctx is None:
            if self.mode != "element":
                raise ValueError(f"the {self.mode!r} router needs a RoutingContext (passed by the model)")
            return self.proj(self.embedding), species, species, species
        if self.mode == "element":
            token_group = ctx.centre_species
            logits = self.proj(self.embedding)  # [n_species, N]
        elif self.mode == "configuration":
            token_group = ctx.centre_structure
            logits = self.proj(ctx.composition.to(x.dtype) @ self.embedding)  # [n_structures, N]
        else:
            pooled = x.new_zeros(ctx.n_centres, x.shape[1]).index_add(0, ctx.centre, x) * ctx.edge_norm
            if self.mode == "atom":
                token_group = torch.arange(ctx.n_centres, device=x.device)
                logits = self.proj(pooled)  # [n_centres, N]
            else:
                token_group = ctx.centre_structure
                n_structures = int(ctx.composition.shape[0])
                count = torch.bincount(token_group, minlength=n_structures).clamp(min=1).to(x.dtype)
                mean = x.new_zeros(n_structures, x.shape[1]).index_add(0, token_group, pooled) / count.unsqueeze(1)
                logits = self.proj(mean)  # [n_structures, N]
        return logits, token_group, ctx.centre_species, token_group.index_select(0, ctx.centre)


class MoEMLP(torch.nn.Module):
    """Routed mixture-of-experts MLP with shared experts, called as ``mlp(x, species)``.

    Parameters
    ----------
    in_dim, out_dim : int
        Feature sizes.
    hidden : sequence of int
        Hidden widths of the dense MLP it replaces; each expert gets ``round(h * expert_width_factor)``.
    activation : str
        A key of :data:`~pipeline.models.mlp.ACTIVATIONS`.
    num_species : int
        Number of species.
    moe : MoEConfig
        Experts, top-k, shared experts, router and expert type.

    Shapes: ``x`` ``(n, in_dim)``, ``species`` ``(n,)`` (centre species of each row) -> ``(n, out_dim)``.
    With a ``routing`` context (:class:`RoutingContext`), rows are routed per centre atom and the call's
    :class:`RoutingRecord` is added to ``routing.records``; the module itself keeps no state.
    """

    def __init__(
        self, in_dim: int, out_dim: int, *, hidden: Sequence[int], activation: str, num_species: int, moe: MoEConfig
    ) -> None:
        super().__init__()
        if moe.expert_type not in EXPERT_TYPES:
            raise ValueError(f"unknown MoE expert_type {moe.expert_type!r}; valid: {list(EXPERT_TYPES)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        if not 1 <= moe.top_k <= moe.num_experts:
            raise ValueError(f"MoE top_k must be in 1..num_experts={moe.num_experts}, got {moe.top_k}")
        self.moe = moe
        self.num_species = int(num_species)
        self.num_experts, self.top_k = int(moe.num_experts), int(moe.top_k)
        widths = _widths(hidden, moe.expert_width_factor)
        self.dims = (int(in_dim), *widths, int(out_dim))
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.shared = torch.nn.ModuleList(
            ScalarMLP(in_dim, out_dim, hidden=widths, activation=activation) for _ in range(moe.num_shared)
        )
        self.experts = _init_stack(self.num_experts, self.dims)
        self.act = ACTIVATIONS[activation]()
        self.router = Router(mode=moe.router, in_dim=in_dim, num_species=num_species,
                             num_experts=self.num_experts, embedding_dim=moe.router_embedding_dim)
        self.out_scale = 1.0 / math.sqrt(min(moe.num_shared, 1) + 1)

    # -- routing ----------------------------------------------------------------------------
    def gates(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities ``(G, N)``, top-k expert indices ``(G, k)`` and renormalised gates ``(G, k)``."""
        probs = torch.softmax(logits, dim=-1)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        return probs, index, top / top.sum(dim=-1, keepdim=True)

    def element_probabilities(self) -> torch.Tensor:
        """Router probabilities per species ``(n_species, N)`` (``element`` router only)."""
        if self.router.mode != "element":
            raise ValueError("element_probabilities needs the element router")
        with torch.no_grad():
            return torch.softmax(self.router.proj(self.router.embedding), dim=-1)

    def routing_record(self, probs, index, token_group, token_species) -> RoutingRecord:
        """Balance loss and expert load of the tokens (centre atoms) of one call."""
        n_tokens = token_group.shape[0]
        p_tok = probs.index_select(0, token_group)  # [n_tokens, N]
        i_tok = index.index_select(0, token_group)  # [n_tokens, k]
        slots = torch.zeros_like(p_tok).scatter_(1, i_tok, 1.0)  # [n_tokens, N] 1 where routed
        if n_tokens:
            frac = slots.sum(0) / (n_tokens * self.top_k)
            balance = self.num_experts * (frac.detach() * p_tok.mean(0)).sum()
        else:
            balance = probs.sum() * 0.0
        load = slots.new_zeros(self.num_species, self.num_experts).index_add(0, token_species, slots)
        return RoutingRecord(balance=balance, load=load.detach().to(torch.float64).cpu())

    # -- experts ----------------------------------------------------------------------------
    def _routed_sparse(self, x: torch.Tensor, index: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        n, k = index.shape
        flat_e = index.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        rows = torch.arange(n, device=x.device).repeat_interleave(k).index_select(0, order)
        weights = gate.reshape(-1).index_select(0, order)
        counts = torch.bincount(flat_e, minlength=self.num_experts).tolist()
        out = x.new_zeros(n, self.out_dim)
        last = len(self.experts) - 1
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            r = rows[start : start + count]
            h = x.index_select(0, r)  # [n_e, in]
            for layer, w in enumerate(self.experts):
                h = torch.nn.functional.linear(h, w[e])
                if layer < last:
                    h = self.act(h)
            out = out.index_add(0, r, h * weights[start : start + count].unsqueeze(1))
            start += count
        return out

    def mixed_weights(self, index: torch.Tensor, gate: torch.Tensor) -> list[torch.Tensor]:
        """MoLE: per routing group, the gate-weighted sum of the experts' weights, per layer ``(G, out, in)``."""
        dense = gate.new_zeros(index.shape[0], self.num_experts).scatter(1, index, gate)  # [G, N]
        return [torch.einsum("gn,noi->goi", dense, w) for w in self.experts]

    def forward(
        self, x: torch.Tensor, species: torch.Tensor | None = None, routing: RoutingContext | None = None
    ) -> torch.Tensor:
        if species is None:
            raise ValueError("MoEMLP needs the centre species of each row")
        logits, token_group, token_species, row_group = self.router(x, species, routing)
        probs, index, gate = self.gates(logits)
        if routing is not None:
            routing.records[self] = self.routing_record(probs, index, token_group, token_species)
        if self.moe.expert_type == "linear":
            routed = grouped_mlp(x, self.mixed_weights(index, gate), row_group, self.act)
        else:
            routed = self._routed_sparse(x, index.index_select(0, row_group), gate.index_select(0, row_group))
        for expert in self.shared:
            routed = routed + expert(x)
        return routed * self.out_scale

    # -- parameters -------------------------------------------------------------------------
    def parameter_counts(self) -> tuple[int, int]:
        """``(active, total)`` parameters per centre atom: shared + router + k of the N routed experts."""
        total = sum(p.numel() for p in self.parameters())
        per_expert = sum(w[0].numel() for w in self.experts)
        return total - (self.num_experts - self.top_k) * per_expert, total

    def extra_repr(self) -> str:
        m = self.moe
        return (f"dims={self.dims}, experts={m.num_experts}, top_k={m.top_k}, shared={m.num_shared}, "
                f"router={m.router}, expert_type={m.expert_type}")


class MergedMoLE(torch.nn.Module):
    """A MoLE layer with element routing folded into per-species dense weights (inference only).

    Built by :meth:`from_moe`; gives the same outputs as the :class:`MoEMLP` it came from.
    """

    def __init__(self, source: MoEMLP) -> None:
        super().__init__()
        if source.moe.expert_type != "linear" or source.router.mode != "element":
            raise ValueError("only MoLE layers (expert_type 'linear') with the element router can be merged")
        with torch.no_grad():
            _, index, gate = source.gates(source.router.proj(source.router.embedding))
            mixed = source.mixed_weights(index, gate)
        self.weights = torch.nn.ParameterList(torch.nn.Parameter(w.detach().clone()) for w in mixed)
        self.shared = copy.deepcopy(source.shared)
        self.act = copy.deepcopy(source.act)
        self.out_scale = source.out_scale
        self.dims = source.dims

    def forward(
        self, x: torch.Tensor, species: torch.Tensor | None = None, routing: RoutingContext | None = None
    ) -> torch.Tensor:
        out = grouped_mlp(x, list(self.weights), species, self.act)
        for expert in self.shared:
            out = out + expert(x)
        return out * self.out_scale


def merge_moe(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every element-routed MoLE layer replaced by a :class:`MergedMoLE`."""
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, MoEMLP) and child.moe.expert_type == "linear" and child.router.mode == "element":
                setattr(module, child_name, MergedMoLE(child))
    if hasattr(merged, "moe_layers"):  # the model's list of layers to route
        merged.moe_layers = tuple(m for _, m in moe_modules(merged))
    return merged


def moe_modules(model: torch.nn.Module) -> list[tuple[str, MoEMLP]]:
    """The MoE layers of ``model`` with their names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoEMLP)]


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(active, total)`` parameters of a model: routed experts an atom does not use are not active."""
    total = sum(p.numel() for p in model.parameters())
    inactive = sum(t - a for a, t in (m.parameter_counts() for _, m in moe_modules(model)))
    return total - inactive, total


def routing_outputs(
    layers: Sequence[torch.nn.Module], ctx: RoutingContext | None, reference: torch.Tensor, num_species: int
) -> dict[str, torch.Tensor]:
    """The routing outputs of one evaluation from its context (keys of :mod:`pipeline.models.contract`).

    ``layers`` are the model's MoE layers in module order; a layer that was not called (no edges, no
    context) gets a zero balance and a zero load. ``reference`` gives the dtype and device of the
    balance loss.

    Returns
    -------
    dict with :data:`keys.MOE_BALANCE_LOSS` ``()`` (sum over layers), ``moe_layer_balance``
    ``(n_layers,)`` and :data:`keys.MOE_LOAD` ``(n_layers, n_species, N)`` float64 on the CPU.
    """
    records = ctx.records if ctx is not None else {}
    balance = reference.new_zeros(())
    per_layer, loads = [], []
    for m in layers:
        record = records.get(m)
        if record is not None:
            balance = balance + record.balance
        per_layer.append(record.balance if record is not None else reference.new_zeros(()))
        loads.append(record.load if record is not None
                     else torch.zeros(num_species, m.num_experts, dtype=torch.float64))
    return {K.MOE_BALANCE_LOSS: balance, MOE_LAYER_BALANCE: torch.stack(per_layer), K.MOE_LOAD: torch.stack(loads)}
