"""Mixture-of-experts bookkeeping for training: the load-balancing loss and routing statistics.

Everything here reads a model's output dict, never its modules: models with MoE layers
(:mod:`pipeline.models.moe`) return the routing of each evaluation as outputs
(:mod:`pipeline.models.contract`): :data:`keys.MOE_BALANCE_LOSS` (a 0-d tensor, the sum over their MoE
layers), ``moe_layer_balance`` ``(n_layers,)`` (its terms) and :data:`keys.MOE_LOAD`
``(n_layers, n_species, N)`` (centre atoms of each species routed to each expert). The modules keep no
routing state between calls. Dense models return none of these, so nothing here changes their training. :class:`RoutingStats` sums the loads of an epoch and turns them into metrics columns
``routing_<model>_<layer>_<species>_e<j>``: the fraction of that species' top-k slots given to
expert j in that layer (each row over j sums to 1).

>>> import torch
>>> stats = RoutingStats()
>>> stats.add("hf", {"moe_load": torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])})
>>> stats.columns({"hf": (["readout"], ["Pt", "O"])})["routing_hf_readout_O_e1"]
0.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pipeline.data import keys as K
from pipeline.models.moe import moe_modules


def balance_loss(outputs: Mapping[str, Mapping[str, torch.Tensor]]) -> torch.Tensor | None:
    """Sum of the balance losses of every model output in ``outputs`` (``None`` when no model has MoE)."""
    terms = [out[K.MOE_BALANCE_LOSS] for out in outputs.values() if K.MOE_BALANCE_LOSS in out]
    return sum(terms[1:], terms[0]) if terms else None


def layer_names(model: torch.nn.Module) -> list[str]:
    """Short names of a model's MoE layers (``layers.0.latent`` -> ``latent0``, ``readout``), in the order of
    the first axis of :data:`keys.MOE_LOAD`."""
    names = []
    for name, _ in moe_modules(model):
        parts = name.split(".")
        names.append(f"{parts[-1]}{parts[1]}" if parts[0] == "layers" and len(parts) > 2 else parts[-1])
    return names


class RoutingStats:
    """Sums of :data:`keys.MOE_LOAD` per model name over an epoch, read from the models' outputs."""

    def __init__(self) -> None:
        self.loads: dict[str, torch.Tensor] = {}

    def add(self, name: str, output: Mapping[str, torch.Tensor]) -> None:
        """Add the expert load of one output dict of model ``name`` (nothing for a dense model)."""
        if K.MOE_LOAD not in output:
            return
        load = output[K.MOE_LOAD].detach().to(torch.float64).cpu()
        self.loads[name] = self.loads[name] + load if name in self.loads else load.clone()

    def fractions(self, name: str) -> torch.Tensor:
        """``(n_layers, n_species, N)``: share of each species' slots per expert (0 for absent species)."""
        load = self.loads[name]
        return load / load.sum(-1, keepdim=True).clamp(min=1e-12)

    def columns(self, layout: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> dict[str, float]:
        """Metrics columns; ``layout[name] = (layer names, species)`` for each model name."""
        out: dict[str, float] = {}
        for name, (layers, species) in layout.items():
            if name not in self.loads:
                continue
            frac = self.fractions(name)
            for li, layer in enumerate(layers):
                for si, symbol in enumerate(species):
                    for e in range(frac.shape[-1]):
                        out[f"routing_{name}_{layer}_{symbol}_e{e}"] = float(frac[li, si, e])
        return out
