"""Helpers for testing interatomic models: small structures, random rotations, output checks.

:func:`validate_model_outputs` is the checker every model of the project (an expert, a mixture)
must pass: output keys, shapes and dtypes, batch = structures one by one, and additivity over a
partition of centres.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule

from pipeline.config import ExpertConfig, MoEConfig
from pipeline.data import keys as K
from pipeline.data.neighbors import collate

SPECIES = ("Pt", "C", "O")


def small_config(**overrides) -> ExpertConfig:
    """A tiny expert (fast in float64) with every architectural feature switched on."""
    values = dict(
        r_max=4.0,
        l_max=2,
        parity=True,
        num_layers=2,
        num_scalar_features=8,
        num_tensor_features=4,
        num_bessels=6,
        two_body_mlp_hidden=(8,),
        latent_mlp_hidden=(8,),
        readout_mlp_hidden=(8,),
        avg_num_neighbors=12.0,
    )
    values.update(overrides)
    return ExpertConfig(**values)


MOE_VARIANTS: dict[str, MoEConfig] = {
    "moe_element": MoEConfig(enabled=True, num_experts=3, top_k=2, num_shared=1),
    "moe_element_noshared": MoEConfig(enabled=True, num_experts=3, top_k=2, num_shared=0),
    "moe_configuration": MoEConfig(enabled=True, num_experts=3, top_k=2, router="configuration"),
    "moe_atom": MoEConfig(enabled=True, num_experts=3, top_k=1, router="atom"),
    "mole_element": MoEConfig(enabled=True, num_experts=3, top_k=2, expert_type="linear"),
    "mole_configuration": MoEConfig(enabled=True, num_experts=3, top_k=2, router="configuration",
                                    expert_type="linear", num_shared=0),
}
"""Small mixture-of-experts settings (latent MLPs and readout) covering every router and expert type."""


def small_moe_config(variant: str, **overrides) -> ExpertConfig:
    """:func:`small_config` with the MoE layers of :data:`MOE_VARIANTS` ``[variant]`` (``dense``: none)."""
    if variant == "dense":
        return small_config(**overrides)
    return small_config(moe=MOE_VARIANTS[variant], **overrides)


def pt_co_slab(
    *, size: tuple[int, int, int] = (2, 2, 3), rattle: float = 0.05, seed: int = 0, vacuum: float = 5.0
) -> Atoms:
    """Rattled Pt(111) slab (periodic in x, y) with CO on top of one atom."""
    slab = fcc111("Pt", size=size, a=3.92, vacuum=vacuum)
    add_adsorbate(slab, Atoms("CO", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 1.15]]), 1.85, "ontop")
    slab.center(vacuum=vacuum, axis=2)
    slab.rattle(rattle, seed=seed)
    return slab


def pt_bulk(
    *, repeat: tuple[int, int, int] = (1, 1, 1), cubic: bool = False, rattle: float = 0.05, seed: int = 1
) -> Atoms:
    """Rattled fcc Pt, periodic in all directions."""
    atoms = bulk("Pt", "fcc", a=3.92, cubic=cubic).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def co_gas(*, seed: int = 2) -> Atoms:
    """A CO molecule without a cell (not periodic)."""
    atoms = molecule("CO")
    atoms.rattle(0.02, seed=seed)
    return atoms


def random_rotation(rng: np.random.Generator, *, reflect: bool = False) -> np.ndarray:
    """A random 3x3 orthogonal matrix (det +1, or -1 with ``reflect``)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = q @ np.diag([1.0, 1.0, -1.0])
    return q


def transform_atoms(atoms: Atoms, rotation: np.ndarray, translation: np.ndarray | None = None) -> Atoms:
    """Rotate positions and cell (row vectors: x -> x R^T), then translate."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    out.set_positions(atoms.positions @ rotation.T + (0.0 if translation is None else translation))
    return out


def evaluate(
    model: torch.nn.Module, frames: Sequence[Atoms], *, species: Sequence[str] = SPECIES, r_max: float, **kwargs
) -> dict[str, torch.Tensor]:
    """Model outputs for ``frames`` batched together (float64 positions)."""
    batch = collate(list(frames), species=species, r_max=r_max, with_targets=False)
    return model(batch, **kwargs)


def validate_model_outputs(
    model: Callable[..., dict[str, torch.Tensor]],
    frames: Sequence[Atoms],
    *,
    r_max: float,
    species: Sequence[str] = SPECIES,
    atol: float = 1e-9,
    seed: int = 0,
) -> None:
    """Assert the output contract of a model taking ``(batch, centers=..., compute_stress=...)``.

    Checks keys, shapes and dtypes; the batch against one structure at a time; and that the
    energies, forces and stress of a random three-way partition of the centres add up to the
    full evaluation. Raises ``AssertionError`` with what differs.
    """
    batch = collate(list(frames), species=species, r_max=r_max, with_targets=False)
    n_atoms, n_structures = batch[K.POSITIONS].shape[0], len(frames)
    out = model(batch, compute_stress=True)
    expected = {
        K.ENERGY: (n_structures,),
        K.PER_ATOM_ENERGY: (n_atoms,),
        K.FORCES: (n_atoms, 3),
        K.STRESS: (n_structures, 3, 3),
    }
    for key, shape in expected.items():
        assert key in out, f"missing output {key!r}"
        assert tuple(out[key].shape) == shape, f"{key}: shape {tuple(out[key].shape)}, expected {shape}"
        assert out[key].dtype.is_floating_point, f"{key}: dtype {out[key].dtype}"
    assert K.DESCRIPTORS in out and out[K.DESCRIPTORS].shape[0] == n_atoms, "descriptors must be (n_atoms, F)"
    torch.testing.assert_close(out[K.PER_ATOM_ENERGY].sum(), out[K.ENERGY].sum(), atol=atol, rtol=0)

    start = 0
    for index, atoms in enumerate(frames):
        single = model(collate([atoms], species=species, r_max=r_max, with_targets=False), compute_stress=True)
        stop = start + len(atoms)
        torch.testing.assert_close(single[K.ENERGY][0], out[K.ENERGY][index], atol=atol, rtol=0)
        torch.testing.assert_close(single[K.FORCES], out[K.FORCES][start:stop], atol=atol, rtol=0)
        if np.all(atoms.pbc):
            torch.testing.assert_close(single[K.STRESS][0], out[K.STRESS][index], atol=atol, rtol=0)
        start = stop

    part = torch.as_tensor(np.random.default_rng(seed).integers(0, 3, size=n_atoms))
    parts = [model(batch, centers=part == p, compute_stress=True) for p in range(3)]
    for key in (K.ENERGY, K.FORCES, K.PER_ATOM_ENERGY):
        total = sum(p[key] for p in parts)
        message = lambda m, key=key: f"partition sum of {key}: {m}"  # noqa: E731
        torch.testing.assert_close(total, out[key], atol=atol, rtol=0, msg=message)
    periodic = torch.as_tensor(np.array([np.all(a.pbc) for a in frames]))
    stress_sum = sum(p[K.STRESS] for p in parts)
    torch.testing.assert_close(stress_sum[periodic], out[K.STRESS][periodic], atol=atol, rtol=0)
