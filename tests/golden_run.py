"""A short fixed-seed run of the whole chain (ingest, HF stage, co-trained LF stage, one
element-routed MoE model of the routing study, mixture, a few MD steps) reduced to numbers, to show that a refactor changes nothing the pipeline computes.

``python tests/golden_run.py --write`` records ``tests/data/golden_run.json`` from the current code;
``tests/test_golden_run.py`` recomputes the numbers and compares them to 1e-4 relative: the same code on
another CPU (other SIMD kernels) gives numbers that differ by up to ~5e-6 relative after the training
steps (measured: a machine of 2026-12-06 against the recording machine, 4 of 476 numbers between 1e-6 and
5e-6), while a behaviour change moves them by far more. Rewrite the record only for a change that is
meant to change results, and say so in the commit.

Numbers kept: the sum and the L2 norm of every floating-point tensor of the three checkpoints, every
numeric column of the metrics tables (sum over rows and the last row; timings left out), the MoE
model's test errors and parameter counts, and for the mixture on a rattled
slab (HF within 3 A of the CO, LF elsewhere): the energy, the per-atom energies, the forces and the
stress, then the total energy and positions after 5 velocity-Verlet steps of 1 fs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
RECORD = HERE / "data" / "golden_run.json"


def _tensor_numbers(prefix: str, state: dict) -> dict[str, float]:
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            v = value.detach().to(torch.float64)
            out[f"{prefix}.{key}.sum"] = float(v.sum())
            out[f"{prefix}.{key}.norm"] = float(v.norm())
    return out


def _metrics_numbers(prefix: str, path: Path) -> dict[str, float]:
    table = pd.read_csv(path)
    out = {}
    for col in table.columns:
        if pd.api.types.is_numeric_dtype(table[col]) and not pd.api.types.is_bool_dtype(table[col]):
            values = table[col].to_numpy(dtype=float)
            if col.endswith(("_s", "seconds", "time")) or "wall" in col:
                continue  # timings are not results
            out[f"{prefix}.{col}.sum"] = float(np.nansum(values))
            out[f"{prefix}.{col}.last"] = float(values[-1])
    return out


def golden_numbers(workdir: str | Path) -> dict[str, float]:
    """Run the chain in ``workdir`` (1 torch thread, float64 evaluation) and return its numbers by name."""
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    from pipeline.config import config_from_dict
    from pipeline.md.calculator import MixtureCalculator
    from pipeline.models import read_checkpoint
    from pipeline.train import run_training
    from pipeline.train.moe_study import train_variant
    from train_support import tiny_config, write_tiny_dataset

    torch.set_num_threads(1)
    workdir = Path(workdir)
    dataset = write_tiny_dataset(workdir / "data")
    cfg = tiny_config(max_epochs=3, agreement_ramp_epochs=1)
    run_training(cfg, stage="hf", dataset=dataset, hf_path=workdir / "hf.pt", metrics_path=workdir / "hf.csv",
                 state_dir=workdir / "hf_state", progress=False)
    run_training(cfg, stage="lf", pair="cotrained", dataset=dataset, anchor_path=workdir / "hf.pt",
                 lf_path=workdir / "lf.pt", metrics_path=workdir / "lf.csv", state_dir=workdir / "lf_state",
                 progress=False)
    numbers: dict[str, float] = {}
    for name in ("hf", "lf"):
        numbers.update(_tensor_numbers(name, read_checkpoint(workdir / f"{name}.pt")["state_dict"]))
        numbers.update(_metrics_numbers(f"{name}_metrics", workdir / f"{name}.csv"))

    moe_cfg = config_from_dict({
        "models": {"lf": {"num_scalar_features": 8, "num_tensor_features": 4, "latent_mlp_hidden": [8],
                          "readout_mlp_hidden": [8], "two_body_mlp_hidden": [8], "r_max": 4.0}},
        "moe_study": {"num_experts": 4, "max_epochs": 2, "batch_size": 4},
    })
    summary = train_variant(moe_cfg, dataset=dataset, dataset_name="pt_co", variant="moe_element_shared",
                            checkpoint=workdir / "moe.pt", metrics=workdir / "moe.csv", summary=workdir / "moe.json")
    numbers.update(_tensor_numbers("moe", read_checkpoint(workdir / "moe.pt")["state_dict"]))
    numbers.update(_metrics_numbers("moe_metrics", workdir / "moe.csv"))
    for key in ("test_energy_mae_mev_atom", "test_force_mae_mev_a", "active_params", "total_params"):
        numbers[f"moe.{key}"] = float(summary[key])

    atoms = fcc111("Pt", (2, 2, 3), a=3.92, vacuum=5.0, periodic=True)
    add_adsorbate(atoms, molecule("CO")[::-1], 1.85, "ontop")
    atoms.info.pop("adsorbate_info", None)
    atoms.rattle(0.05, seed=3)
    c = atoms.get_chemical_symbols().index("C")
    expert = (atoms.get_distances(c, range(len(atoms)), mic=True) > 3.0).astype(np.int64)  # 0 = HF
    calc = MixtureCalculator.from_checkpoints([workdir / "hf.pt", workdir / "lf.pt"], expert=expert)
    atoms.calc = calc
    numbers["mixture.energy"] = float(atoms.get_potential_energy())
    for i, e in enumerate(atoms.get_potential_energies()):
        numbers[f"mixture.energies.{i}"] = float(e)
    for i, f in enumerate(atoms.get_forces().ravel()):
        numbers[f"mixture.forces.{i}"] = float(f)
    for i, s in enumerate(atoms.get_stress()):
        numbers[f"mixture.stress.{i}"] = float(s)
    rng = np.random.default_rng(7)
    atoms.set_velocities(rng.normal(0.0, 0.01, (len(atoms), 3)))
    VelocityVerlet(atoms, timestep=1.0 * fs).run(5)
    numbers["md.etotal"] = float(atoms.get_total_energy())
    for i, x in enumerate(atoms.positions.ravel()):
        numbers[f"md.positions.{i}"] = float(x)
    return numbers


def compare(got: dict[str, float], want: dict[str, float], rtol: float = 1e-4, atol: float = 1e-9) -> list[str]:
    """Names whose values differ (beyond ``rtol`` relative, ``atol`` absolute) or are missing on either side."""
    bad = [f"missing: {k}" for k in want if k not in got] + [f"new: {k}" for k in got if k not in want]
    for key in want.keys() & got.keys():
        a, b = got[key], want[key]
        if not (np.isnan(a) and np.isnan(b)) and not abs(a - b) <= atol + rtol * abs(b):
            bad.append(f"{key}: {a!r} != {b!r}")
    return sorted(bad)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record the numbers in {RECORD}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        numbers = golden_numbers(tmp)
    if args.write:
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(numbers)} numbers to {RECORD}")
        return 0
    bad = compare(numbers, json.loads(RECORD.read_text()))
    print("\n".join(bad) if bad else f"all {len(numbers)} numbers equal the record")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
