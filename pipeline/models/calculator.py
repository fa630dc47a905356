"""ASE calculator for one Allegro expert.

>>> from ase.build import bulk
>>> from pipeline.config import ExpertConfig
>>> from pipeline.models import build_model
>>> model = build_model(ExpertConfig(l_max=1, num_layers=1, num_scalar_features=8, num_tensor_features=4), ("Pt",))
>>> atoms = bulk("Pt", "fcc", a=3.92)
>>> atoms.calc = AllegroCalculator(model)
>>> atoms.get_forces().shape, atoms.get_stress().shape
((1, 3), (6,))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from ase.stress import full_3x3_to_voigt_6_stress

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.models.allegro import AllegroModel
from pipeline.models.checkpoint import load_checkpoint


class AllegroCalculator(Calculator):
    """Energies (total and per atom), forces and stress of one :class:`AllegroModel`, in eV and A.

    Parameters
    ----------
    model : AllegroModel
        The expert; it is put in eval mode. Its dtype is used for the evaluation.
    device : str or torch.device, optional
        Where to evaluate (default: where the model's parameters are).

    Stress (eV/A^3, ASE sign and Voigt order) is computed only when asked and only for cells
    periodic in all three directions.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict = {}
    nolabel = True

    def __init__(self, model: AllegroModel, *, device: str | torch.device | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        species: list[str] | None = None,
        r_max: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> AllegroCalculator:
        """Calculator for the expert saved at ``path`` (species/cutoff checked when given)."""
        return cls(load_checkpoint(path, species=species, r_max=r_max, dtype=dtype, map_location=device), device=device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:  # noqa: ANN001
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress and not self.atoms.pbc.all():
            raise PropertyNotImplementedError("stress needs a cell periodic in all three directions")
        batch = collate(
            [self.atoms], species=self.model.species, r_max=self.model.r_max, dtype=self.model.dtype, with_targets=False
        )
        batch = {key: value.to(self.device) for key, value in batch.items()}
        out = self.model(batch, compute_forces=True, compute_stress=want_stress, create_graph=False)
        energy = float(out[K.ENERGY].detach().cpu()[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out[K.PER_ATOM_ENERGY].detach().cpu().double().numpy(),
            "forces": out[K.FORCES].detach().cpu().double().numpy(),
        }
        if want_stress:
            stress = out[K.STRESS].detach().cpu().double().numpy()[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(stress))
