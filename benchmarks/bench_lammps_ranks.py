"""Benchmark: LAMMPS MD step time of the mixture on 1 and N MPI ranks (fix external, domain decomposition).

For Pt(111)+CO slabs of about ``--sizes`` atoms (6 layers, CO on 16 % of the top sites, HF on the
``--hf-fraction`` of atoms closest to a CO), runs ``--steps`` NVE steps through
:class:`pipeline.md.lammps_driver.LammpsMD` on each rank count of ``--ranks`` (1 rank: one process,
the periodic all-atoms path; N > 1: ``mpirun -np N``, each rank its local atoms plus the ghost centres
within ``r_max + skin``), and writes a CSV and a Markdown table with, per case:

- ``step_ms``: wall time of one step (the run after LAMMPS's set-up, which already evaluated once);
- ``speedup`` and ``parallel_efficiency`` = t(1 rank) / (N t(N ranks)) at the same size and device;
- ``redundant_work_fraction``: ghost centres evaluated / local centres (all ranks, all calls);
- ``model_share``: the slowest rank's model time over the run's wall time;
- ``peak_rss_mib_per_rank``: the largest peak resident memory of a rank (whole process: torch,
  LAMMPS, Python), and on CUDA ``peak_gpu_mib_per_rank`` (torch's peak allocation).

One torch thread per rank. ``--models small`` (default): untrained small experts (those of the tests,
r_max 4 / 3.5 A, float64), ``presets``: the ``models.hf`` / ``models.lf`` presets of ``--config`` with
random weights (a model's cost does not depend on its weights). ``--device cuda``: each rank takes GPU
(local rank mod GPU count) -- run one rank per GPU, e.g. ``--ranks 1 --sizes 8000 32000`` on one GPU.

Usage::

    python benchmarks/bench_lammps_ranks.py --sizes 2000 8000 --ranks 1 2 --steps 10 \\
        --csv benchmarks/results/lammps_ranks.csv --markdown benchmarks/results/lammps_ranks.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SPECIES = ("Pt", "C", "O")


def prepare(case: dict, directory: Path) -> dict:
    """Cell (with its partition) and expert checkpoints of one case, written to ``directory``."""
    import torch

    from pipeline.analysis.speed import timing_slab
    from pipeline.config import MDPartitionConfig, RegionConfig, load_config
    from pipeline.devices import DTYPES
    from pipeline.md.partition import partition_atoms, write_partition
    from pipeline.models import build_model
    from pipeline.models.checkpoint import save_checkpoint
    from pipeline.models.testing import small_config

    dtype = DTYPES[case["dtype"]]
    if case["models"] == "small":
        configs = {"hf": small_config(), "lf": small_config(l_max=1, num_layers=1, r_max=3.5)}
        regions, lattice = RegionConfig(), 3.92
    else:
        cfg = load_config(case["config"], check_files=False)
        configs = {"hf": cfg.models.hf, "lf": cfg.models.lf}
        regions, lattice = cfg.regions, cfg.analysis.lattice_constant_a
    checkpoints = {}
    for seed, (name, config) in enumerate(configs.items()):
        checkpoints[name] = str(directory / f"{name}.pt")
        save_checkpoint(checkpoints[name], build_model(config, SPECIES, dtype=dtype, seed=seed))
    atoms = timing_slab(case["size"], layers=6, co_coverage=0.16, lattice_constant_a=lattice)
    atoms.rattle(0.02, seed=0)
    expert = partition_atoms(atoms, MDPartitionConfig(rule="closest_fraction", hf_fraction=case["hf_fraction"]),
                             regions)
    write_partition(directory / "cell.extxyz", atoms, expert, rule="closest_fraction")
    return {"cell": str(directory / "cell.extxyz"), "checkpoints": checkpoints}


def worker(case: dict) -> None:
    """Run one case on the ranks this process was started with; rank 0 writes ``case["out"]`` (JSON)."""
    import resource

    import numpy as np
    import torch

    from pipeline.config import MDRunConfig, MDSafetyConfig, RegionConfig
    from pipeline.devices import DTYPES, resolve_device
    from pipeline.md.evaluator import MixtureEvaluator
    from pipeline.md.lammps_driver import LammpsMD, MDFiles, MDSystem
    from pipeline.md.lammps_io import import_lammps, launched_by_mpi, local_rank
    from pipeline.md.partition import bottom_layers, read_partition
    from pipeline.md.stage import load_mixture

    torch.set_num_threads(1)
    import_lammps()
    device = resolve_device(case["device"], local_rank() % max(torch.cuda.device_count(), 1)
                            if launched_by_mpi() and case["device"] != "cpu" else 0)
    atoms, expert = read_partition(case["cell"])
    potential = load_mixture(case["checkpoints"], species=SPECIES, dtype=DTYPES[case["dtype"]], device=device)
    evaluator = MixtureEvaluator(potential, numbers=atoms.numbers, expert=expert, skin=1.0, device=device,
                                 centres_per_chunk=(128, 512))
    run = MDRunConfig(ensemble="nve", timestep_fs=1.0, steps=case["steps"], equilibration_steps=0,
                      temperature_k=300.0, thermo_interval=case["steps"], dump_interval=10 * case["steps"],
                      restart_interval=10 * case["steps"])
    directory = Path(case["out"]).parent / f"run_{case['ranks']}"
    files = MDFiles(thermo_csv=directory / "thermo.csv", final=directory / "final.extxyz",
                    dump=directory / "dump.lammpstrj", state_dir=directory / "state")
    fixed = bottom_layers(atoms, 2, RegionConfig())
    md = LammpsMD(evaluator, MDSystem(atoms, expert, fixed), run, MDSafetyConfig(), files, seed=1,
                  fingerprint="bench")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = md.run()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    if md.comm is not None:
        peaks = md.comm.allgather(np.array([rss, gpu]))
        rss, gpu = float(peaks[:, 0].max()), float(np.nanmax(peaks[:, 1])) if device.type == "cuda" else gpu
    if not md.root:
        return
    model = max(stats.get("rank_model_time_s", [stats["model_time_s"]]))
    row = {
        "device": str(device) if case["ranks"] == 1 else f"{device.type} x{case['ranks']}",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "n_atoms": len(atoms), "n_hf": int(np.sum(expert == 0)), "ranks": stats["mpi_ranks"],
        "steps": stats["steps_run"], "step_ms": 1000.0 * stats["step_time_s"],
        "redundant_work_fraction": stats["redundant_work_fraction"],
        "model_share": model / stats["wall_s"],
        "peak_rss_mib_per_rank": rss, "peak_gpu_mib_per_rank": gpu,
        "mpi_backend": stats.get("mpi_backend", ""),
    }
    Path(case["out"]).write_text(json.dumps(row))


def run_case(case: dict) -> dict:
    from pipeline.md.lammps_io import mpirun_command

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    launcher = mpirun_command(case["ranks"]) if case["ranks"] > 1 else []
    command = [*launcher, sys.executable, __file__, "--worker", json.dumps(case)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {case['size']} atoms on {case['ranks']} rank(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(Path(case["out"]).read_text())


def build_table(rows: list[dict]):
    """Speed-up and parallel efficiency against one rank of the same size and device kind."""
    import pandas as pd

    table = pd.DataFrame(rows)
    kind = table["device"].str.split(" ").str[0].str.split(":").str[0]
    base = {(k, n): t for k, n, r, t in zip(kind, table["n_atoms"], table["ranks"], table["step_ms"]) if r == 1}
    one = [base.get((k, n), float("nan")) for k, n in zip(kind, table["n_atoms"])]
    table.insert(table.columns.get_loc("step_ms") + 1, "speedup", [t1 / t for t1, t in zip(one, table["step_ms"])])
    table.insert(table.columns.get_loc("speedup") + 1, "parallel_efficiency",
                 table["speedup"] / table["ranks"])
    return table.sort_values(["device", "n_atoms", "ranks"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="approx. atoms")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="MPI rank counts (1 = one process)")
    parser.add_argument("--steps", type=int, default=10, help="timed NVE steps per case")
    parser.add_argument("--models", choices=["small", "presets"], default="small")
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"), help="presets (--models presets)")
    parser.add_argument("--hf-fraction", type=float, default=0.2)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (each rank its local GPU)")
    parser.add_argument("--note", default="", help="a line for the Markdown table (e.g. the machine's load)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_OUT / "lammps_ranks.csv")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_OUT / "lammps_ranks.md")
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    from pipeline.atomic import write_atomic

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_lammps_ranks_") as tmp:
        for size in args.sizes:
            directory = Path(tmp) / str(size)
            directory.mkdir()
            case = {"size": size, "models": args.models, "config": args.config, "dtype": args.dtype,
                    "hf_fraction": args.hf_fraction, "device": args.device, "steps": args.steps}
            case.update(prepare(case, directory))
            for ranks in args.ranks:
                rows.append(run_case(dict(case, ranks=ranks, out=str(directory / f"row_{ranks}.json"))))
                print(json.dumps(rows[-1]), flush=True)
    table = build_table(rows)
    table.insert(1, "precision", args.dtype)
    table.insert(2, "models", args.models)
    csv_text = table.to_csv(index=False, float_format="%.5g")
    write_atomic(args.csv, lambda path: path.write_text(csv_text))
    header = (f"# LAMMPS MD step on 1 and N MPI ranks (fix external, {args.models} experts, {args.dtype}, "
              f"1 torch thread per rank, {args.steps} NVE steps after the set-up)\n\n"
              + (f"{args.note}\n\n" if args.note else ""))
    md_text = header + table.to_markdown(index=False, floatfmt=".4g") + "\n"
    write_atomic(args.markdown, lambda path: path.write_text(md_text))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
