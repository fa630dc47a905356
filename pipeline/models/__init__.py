"""Allegro experts: model, building blocks, scale/shift, checkpoints, the potential contract and the ASE calculator.

Public names are re-exported here. Typical use::

    from pipeline.config import load_config
    from pipeline.data.neighbors import collate
    from pipeline.models import AllegroCalculator, build_model, save_checkpoint, load_checkpoint

    cfg = load_config()
    model = build_model(cfg.models.hf, cfg.species, dtype=torch.float32, seed=cfg.seed)
    model.set_scale_shift(scales=force_rms_scales(frames, cfg.species), shifts=fit_energy_shifts(frames, cfg.species))
    batch = collate(frames, species=model.species, r_max=model.r_max)
    out = model(batch, compute_stress=True)             # energy, per_atom_energy, forces, stress, descriptors
    part = model(batch, centers=mask)                   # only the centres in ``mask`` (all atoms as neighbours)
    save_checkpoint("hf.pt", model)
    atoms.calc = AllegroCalculator(load_checkpoint("hf.pt", species=cfg.species, r_max=5.0))

Batch keys, shapes and units: :mod:`pipeline.data.keys`. What every potential (an expert, a mixture)
takes and returns: :mod:`pipeline.models.contract` (:class:`Potential`); the one ASE calculator over it:
:class:`PotentialCalculator`.
"""

from pipeline.models.allegro import AllegroModel, build_model, expert_config_from_dict
from pipeline.models.calculator import AllegroCalculator, PotentialCalculator
from pipeline.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from pipeline.models.contract import VIRIAL, Potential
from pipeline.models.geometry import edge_vectors, evaluate_with_derivatives
from pipeline.models.mlp import ACTIVATIONS, ScalarMLP, make_mlp
from pipeline.models.moe import (
    MergedMoLE,
    MoEMLP,
    RoutingContext,
    RoutingRecord,
    merge_moe,
    parameter_counts,
)
from pipeline.models.scale_shift import (
    PerSpeciesScaleShift,
    fit_energy_shifts,
    force_rms_scales,
)
from pipeline.models.tensor_product import ChannelwiseTensorProduct, plan_tensor_track

__all__ = [
    "ACTIVATIONS",
    "AllegroCalculator",
    "AllegroModel",
    "CheckpointError",
    "ChannelwiseTensorProduct",
    "PerSpeciesScaleShift",
    "Potential",
    "PotentialCalculator",
    "MergedMoLE",
    "MoEMLP",
    "RoutingContext",
    "RoutingRecord",
    "ScalarMLP",
    "VIRIAL",
    "build_model",
    "edge_vectors",
    "evaluate_with_derivatives",
    "expert_config_from_dict",
    "fit_energy_shifts",
    "force_rms_scales",
    "load_checkpoint",
    "make_mlp",
    "merge_moe",
    "parameter_counts",
    "plan_tensor_track",
    "read_checkpoint",
    "save_checkpoint",
]
