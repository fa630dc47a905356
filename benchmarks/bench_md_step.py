"""Benchmark: cost of one MD step of full HF, full LF and the mixture against the system size.

For Pt(111)+CO slabs of about ``--sizes`` atoms (6 layers, CO on 16 % of the top sites, as the speed
analysis builds them), times one energy+forces evaluation through the MD stage's evaluator
(:class:`pipeline.md.evaluator.MixtureEvaluator`, or :class:`pipeline.md.adaptive.AdaptiveEvaluator` for the
adaptive partition: the code the LAMMPS callback calls, Verlet list kept) for full HF, full LF and, by
``--partition``, the static mixture at HF fraction ``--hf-fraction`` (the atoms closest to a CO; mode
``moe``, the default) and / or the adaptive partition with the radii and margin of ``md.partition.adaptive``
of ``--config`` (mode ``adaptive``; inner radius default: the LF preset's r_max), each with the chunk sizes
of ``md.centres_per_chunk`` ("chunked") and in one pass over all centres ("one_pass", the code before
chunking). Writes a CSV and a Markdown table with, per case:

- ``step_ms``: median wall time of one step (``--repeats`` after ``--warmup``), one torch thread;
- ``n_hf``, ``n_lf``: the centres each expert evaluates (adaptive: those of the last timed step, the atoms
  with lambda > 0 / lambda < 1 when chunked, the margin's sets in one pass; the shell counts for both), and
  for the adaptive rows the radii ``r_in_a``, ``r_out_a`` and ``margin_a``;
- ``us_per_atom`` and ``linearity``: cost per atom relative to that of the smallest size of the same
  case (1.0 = perfectly linear);
- ``speedup_vs_hf``, the edge bound ``ideal_speedup`` = 1 / (e_H + e_L c_LF / c_HF) from the per-edge
  costs of full HF and full LF of the same size and variant (e_H, e_L: the mixture's edges centred on HF
  / LF atoms within each expert's r_max, over the edges of full HF; ``edges_hf``, ``edges_lf`` per case;
  see :mod:`pipeline.analysis.speed`), ``fraction_of_ideal``, and the naive atom-fraction bound
  ``ideal_speedup_atoms`` = 1 / (f + (1 - f) c_LF / c_HF) with per-atom costs (adaptive: n_lf / n for
  1 - f, f = n_hf / n);
- ``neighbor_build_ms``: one rebuild of the Verlet list (vesin, cutoff + skin), and
  ``neighbor_share_md``: its share of the step time at ``--rebuild-rate`` rebuilds per step (the
  default rate, 368 rebuilds in 10 000 steps, is what the default 10 ps NVE run measured);
- ``peak_mib`` and ``kib_per_atom``: increase of the process's peak resident memory (on CUDA: of the
  device memory allocated by torch) from just before the first evaluation to the end (each case runs in
  a fresh process).

Weights are random (a model's cost does not depend on its weights); the architectures are the
``models.hf`` / ``models.lf`` presets of ``--config`` (``--hf-variant moe_element_shared``: the HF preset with
element-routed MoE layers at its dense active parameter count, :mod:`pipeline.train.moe_study`). ``--profile N``
also writes the top operators of the HF expert at N atoms (torch.profiler, self CPU time) for both variants.

Usage::

    python benchmarks/bench_md_step.py --sizes 500 1000 2000 4000 8000 \\
        --csv benchmarks/results/bench_md_step.csv --markdown benchmarks/results/bench_md_step.md \\
        --profile 2000 --profile-markdown benchmarks/results/profile_hf.md
    python benchmarks/bench_md_step.py --partition static adaptive --sizes 500 2000   # both partitions
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MODES = ("hf", "lf", "moe", "adaptive")  # the values of the mode column
PARTITIONS = {"static": "moe", "adaptive": "adaptive"}  # --partition -> the mode of its cases
VARIANTS = ("chunked", "one_pass")


def _rss_kib(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident memory of this process, KiB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _setup(args: dict):
    """Build the system, the potential and the evaluator of one case (in the worker process); ``expert`` is
    None for the adaptive partition."""
    import numpy as np
    import torch

    from pipeline.analysis.speed import timing_slab
    from pipeline.config import MDPartitionConfig, load_config
    from pipeline.devices import DTYPES
    from pipeline.md.adaptive import AdaptiveEvaluator, adaptive_mixture
    from pipeline.md.evaluator import MixtureEvaluator
    from pipeline.md.partition import EXPERTS, partition_atoms
    from pipeline.md.potential import MixturePotential
    from pipeline.models import build_model

    torch.set_num_threads(args["threads"])
    cfg = load_config(args["config"], check_files=False)
    dtype = DTYPES[args["dtype"]]
    atoms = timing_slab(args["size"], layers=6, co_coverage=0.16, lattice_constant_a=cfg.analysis.lattice_constant_a)
    presets = {name: getattr(cfg.models, name) for name in EXPERTS}
    if args.get("hf_variant", "dense") != "dense":  # the HF preset with MoE layers at its active parameter count
        from pipeline.train.moe_study import variant_config

        presets["hf"] = variant_config(cfg, args["hf_variant"], cfg.species, base_model="hf")[0]
    models = {name: build_model(presets[name], cfg.species, dtype=dtype, seed=i).eval()
              for i, name in enumerate(EXPERTS)}
    mode, chunked = args["mode"], args["variant"] == "chunked"
    if mode == "adaptive":
        potential = adaptive_mixture(models["hf"], models["lf"], cfg.md.partition.adaptive,
                                     adsorbate_species=cfg.regions.adsorbate_species)
        chunks = cfg.md.centres_per_chunk.for_experts(EXPERTS) if chunked else 0
        evaluator = AdaptiveEvaluator(potential, numbers=atoms.numbers, skin=cfg.md.neighbor_skin_a,
                                      device=args["device"], centres_per_chunk=chunks)
        return atoms, None, evaluator, chunks
    if mode == "moe":
        names = EXPERTS
        expert = partition_atoms(atoms, MDPartitionConfig(rule="closest_fraction", hf_fraction=args["hf_fraction"]),
                                 cfg.regions)
    else:
        names = (mode,)
        expert = np.zeros(len(atoms), dtype=np.int64)
    potential = MixturePotential([models[n] for n in names], names=names)
    chunks = cfg.md.centres_per_chunk.for_experts(names) if chunked else 0
    evaluator = MixtureEvaluator(potential, numbers=atoms.numbers, expert=expert, skin=cfg.md.neighbor_skin_a,
                                 device=args["device"], centres_per_chunk=chunks)
    return atoms, expert, evaluator, chunks


def worker(args: dict) -> dict:
    """Time one case; returns its row (runs in a fresh process)."""
    import statistics

    import numpy as np

    import torch

    atoms, expert, evaluator, chunks = _setup(args)
    cuda = evaluator.device.type == "cuda"
    evaluator.neighbors.update(atoms.positions, atoms.cell.array, atoms.pbc)  # first list, outside the memory delta
    base = _rss_kib("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats(evaluator.device)
        base_gpu = torch.cuda.memory_allocated(evaluator.device)

    def step() -> float:
        if cuda:
            torch.cuda.synchronize(evaluator.device)
        start = time.perf_counter()
        evaluator(atoms.positions, atoms.cell.array, atoms.pbc)  # returns NumPy arrays: synchronised
        return time.perf_counter() - start

    for _ in range(max(args["warmup"], 1)):
        step()
    times = [step() for _ in range(args["repeats"])]
    peak = _rss_kib("VmHWM")
    if cuda:  # device memory is what bounds a GPU run
        peak = base + (torch.cuda.max_memory_allocated(evaluator.device) - base_gpu) // 1024
    from pipeline.analysis.speed import centre_edges
    from pipeline.md.neighbors import neighbor_list

    potential = evaluator.potential
    if expert is None:  # adaptive: the centres of the last timed step
        centres = [evaluator.weights > 0, evaluator.weights < 1]
    else:
        centres = [expert == k for k in range(len(potential.experts))]
    counts = centre_edges(atoms, centres, [float(m.r_max) for m in potential.experts])
    edges = {f"edges_{name}": int(count) for name, count in zip(potential.names, counts)}
    builds = []
    verlet = evaluator.neighbors
    for _ in range(3):  # what one rebuild of the Verlet list costs
        start = time.perf_counter()
        neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, verlet.cutoff + verlet.skin)
        builds.append(time.perf_counter() - start)
    return {
        "n_atoms": len(atoms), "mode": args["mode"], "variant": args["variant"],
        "hf_variant": args.get("hf_variant", "dense"),
        "centres_per_chunk": chunks if isinstance(chunks, int) else "/".join(map(str, chunks)),
        "n_hf": evaluator.centres["hf"], "n_lf": evaluator.centres["lf"],
        **({"r_in_a": potential.r_in, "r_out_a": potential.r_out, "margin_a": potential.margin}
           if expert is None else {}),
        "step_ms": 1000.0 * statistics.median(times), "best_ms": 1000.0 * min(times),
        "neighbor_build_ms": 1000.0 * statistics.median(builds), "peak_mib": max(peak - base, 0) / 1024.0,
        "n_edges": int(evaluator.neighbors.edge_index.shape[1]),
        "edges_hf": edges.get("edges_hf", 0), "edges_lf": edges.get("edges_lf", 0),
    }


def profile(args: dict, markdown: Path, top: int) -> None:
    """torch.profiler table of the HF expert's step (self CPU time per operator), both variants."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    lines = [f"# Profile of one HF step, {args['size']} atoms, {args['dtype']}, {args['threads']} thread(s)", ""]
    for variant in VARIANTS:
        case = dict(args, mode="hf", variant=variant)
        atoms, _, evaluator, chunks = _setup(case)
        for _ in range(2):
            evaluator(atoms.positions, atoms.cell.array, atoms.pbc)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            evaluator(atoms.positions, atoms.cell.array, atoms.pbc)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        label = "all" if not chunks else "/".join(map(str, chunks)) if not isinstance(chunks, int) else str(chunks)
        lines += [f"## {variant} (centres per chunk: {label}), total self CPU {total / 1000:.0f} ms", "",
                  "| operator | calls | self CPU ms | share |", "|---|---|---|---|"]
        lines += [f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1000:.1f} | "
                  f"{100 * e.self_cpu_time_total / total:.1f} % |" for e in rows]
        lines.append("")
    from pipeline.atomic import write_atomic

    text = "\n".join(lines)
    write_atomic(markdown, lambda path: path.write_text(text))


def _run_case(case: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_table(rows: list[dict], *, hf_fraction: float, rebuild_rate: float):
    """Derived columns: per-atom cost, linearity, speedups, ideal bounds (edges, atoms), neighbour-list share."""
    import pandas as pd

    from pipeline.analysis.speed import ideal_speedup

    table = pd.DataFrame(rows)
    table["us_per_atom"] = 1000.0 * table["step_ms"] / table["n_atoms"]
    table["kib_per_atom"] = 1024.0 * table["peak_mib"] / table["n_atoms"]
    smallest = table.loc[table.groupby(["mode", "variant"])["n_atoms"].idxmin()].set_index(["mode", "variant"])
    table["linearity"] = [r.us_per_atom / smallest.loc[(r.mode, r.variant), "us_per_atom"] for r in table.itertuples()]
    ref = table.set_index(["n_atoms", "variant", "mode"])
    speedup, ideal, ideal_atoms, edge_fraction = [], [], [], []
    for r in table.itertuples():
        hf, lf = ref.loc[(r.n_atoms, r.variant, "hf")], ref.loc[(r.n_atoms, r.variant, "lf")]
        f = {"hf": 1.0, "lf": 0.0}.get(r.mode, r.n_hf / r.n_atoms)
        speedup.append(hf["step_ms"] / r.step_ms)
        e_hf, e_lf = r.edges_hf / hf["edges_hf"], r.edges_lf / hf["edges_hf"]
        edge_fraction.append(e_hf)
        ideal.append(ideal_speedup(e_hf, e_lf=e_lf, c_hf=hf["step_ms"] / hf["edges_hf"],
                                   c_lf=lf["step_ms"] / lf["edges_lf"]))
        e_lf_atoms = r.n_lf / r.n_atoms if r.mode == "adaptive" else None  # shell atoms: centres of both
        ideal_atoms.append(ideal_speedup(f, e_lf=e_lf_atoms, c_hf=hf["step_ms"], c_lf=lf["step_ms"]))
    table["hf_edge_fraction"] = edge_fraction
    table["speedup_vs_hf"] = speedup
    table["ideal_speedup"] = ideal
    table["fraction_of_ideal"] = table["speedup_vs_hf"] / table["ideal_speedup"]
    table["ideal_speedup_atoms"] = ideal_atoms
    table["neighbor_share_md"] = rebuild_rate * table["neighbor_build_ms"] / table["step_ms"]
    table.insert(2, "hf_fraction", [{"hf": 1.0, "lf": 0.0}.get(m, n / a) for m, n, a in
                                    zip(table["mode"], table["n_hf"], table["n_atoms"])])
    return table.sort_values(["variant", "mode", "n_atoms"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"), help="presets and chunk sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000], help="approx. atoms")
    parser.add_argument("--hf-fraction", type=float, default=0.2, help="HF fraction of the static mixture")
    parser.add_argument("--partition", nargs="+", default=["static"], choices=list(PARTITIONS),
                        help="mixture cases: static (HF fraction --hf-fraction) and / or adaptive "
                             "(md.partition.adaptive of --config)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the profile is CPU-only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rebuild-rate", type=float, default=368 / 10000,
                        help="Verlet-list rebuilds per MD step (default: the default MD run's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--hf-variant", default="dense",
                        help="the HF expert as this variant of the MoE study (pipeline.train.moe_study.VARIANTS, "
                             "e.g. moe_element_shared: MoE layers at the dense preset's active parameter count, "
                             "moe_study settings of --config)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_OUT / "bench_md_step.csv")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_OUT / "bench_md_step.md")
    parser.add_argument("--profile", type=int, default=0, help="also profile the HF expert at this many atoms")
    parser.add_argument("--profile-markdown", type=Path, default=DEFAULT_OUT / "profile_hf.md")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from tqdm import tqdm

    from pipeline.atomic import write_atomic

    common = {"config": args.config, "dtype": args.dtype, "threads": args.threads, "repeats": args.repeats,
              "warmup": args.warmup, "hf_fraction": args.hf_fraction, "device": args.device,
              "hf_variant": args.hf_variant}
    modes = ("hf", "lf", *dict.fromkeys(PARTITIONS[p] for p in args.partition))
    cases = [dict(common, size=n, mode=m, variant=v) for v in args.variants for n in args.sizes for m in modes]
    rows = [_run_case(c) for c in tqdm(cases, desc="cases", unit="case")]
    table = build_table(rows, hf_fraction=args.hf_fraction, rebuild_rate=args.rebuild_rate)
    table.insert(0, "device", args.device)
    table.insert(1, "precision", args.dtype)
    table.insert(2, "threads", args.threads)
    csv_text = table.to_csv(index=False, float_format="%.5g")
    write_atomic(args.csv, lambda path: path.write_text(csv_text))
    header = (f"# One MD step against system size ({args.device}, {args.threads} torch thread(s), {args.dtype}, "
              f"median of {args.repeats} after {args.warmup} warm-up; random weights, presets of {args.config}, HF "
              f"as {args.hf_variant})\n\n")
    md_text = header + table.to_markdown(index=False, floatfmt=".4g") + "\n"
    write_atomic(args.markdown, lambda path: path.write_text(md_text))
    if args.profile:
        profile(dict(common, size=args.profile, device="cpu"), args.profile_markdown, top=15)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
