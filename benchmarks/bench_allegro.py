"""Benchmark: time and peak memory of one energy+forces evaluation of the Allegro experts.

For each preset of ``models:`` in the configuration (hf, lf) and a Pt(111)+CO slab of about 100,
500 and 2000 atoms, times our model and nequip-allegro 0.8.3 built with the same hyperparameters
(same neighbour list, float32, one torch thread), in the same run, and writes a CSV and a Markdown
table.

Method
------
- Every case runs in a fresh Python process (so the peak memory of one case is not hidden by an
  earlier one); inside it: build model and graph, ``--warmup`` evaluations, then ``--repeats``
  timed evaluations; the median wall time is reported. The neighbour list is built once, outside
  the timing (both models get the same edges).
- One evaluation = energy and forces by autograd (``create_graph=False``); nequip-allegro's
  ``ForceStressOutput`` always also differentiates a cell strain (virial), so a column with our
  energy+forces+stress time is given too.
- Peak memory = increase of the process's peak resident set size (``resource.getrusage(...).ru_maxrss``)
  from just before the first evaluation to the end of the timed ones, in MiB.
- The hf/lf cost ratio of our presets is also measured in one extra process that times the two
  presets alternately, so that load drift on a shared machine affects both alike: ratio of the
  medians (``hf_over_lf_interleaved``) and of the fastest runs (``hf_over_lf_interleaved_best``,
  closest to an unloaded machine); ``hf_over_lf_ours`` is the ratio of the separate per-case
  medians.

Usage::

    python benchmarks/bench_allegro.py --csv benchmarks/results/allegro.csv \\
        --markdown benchmarks/results/allegro.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# Pt(111) slabs, 6 layers; (n x n surface cell, CO molecules on top sites) -> atoms
SLABS = {100: (4, 2), 500: (9, 7), 2000: (18, 28)}


def pt_co_slab(n_atoms: int):
    """Pt(111) 6-layer slab with CO on random top sites, rattled, with about ``n_atoms`` atoms."""
    import numpy as np
    from ase import Atoms
    from ase.build import add_adsorbate, fcc111

    if n_atoms not in SLABS:
        raise ValueError(f"slab sizes available: {sorted(SLABS)}")
    n_xy, n_co = SLABS[n_atoms]
    slab = fcc111("Pt", (n_xy, n_xy, 6), a=3.92, vacuum=8.0)
    top = [i for i, atom in enumerate(slab) if atom.tag == 1]
    rng = np.random.default_rng(0)
    for i in rng.choice(top, n_co, replace=False):
        add_adsorbate(slab, Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.15]]), 1.85, position=slab.positions[i, :2])
    slab.rattle(0.03, seed=0)
    return slab


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _reference_model(cfg, species):
    """nequip-allegro 0.8.3 AllegroModel with the hyperparameters of our ExpertConfig."""
    import torch
    from nequip.utils.global_state import set_global_state

    set_global_state()  # sets the default dtype to float64 ...
    torch.set_default_dtype(torch.float32)  # ... back to float32 for a like-for-like comparison
    from allegro.model import AllegroModel

    def depth_width(hidden):
        return len(hidden), (hidden[0] if hidden else 1)

    hidden = (cfg.two_body_mlp_hidden, cfg.latent_mlp_hidden, cfg.readout_mlp_hidden)
    if any(len(set(widths)) > 1 for widths in hidden):
        raise ValueError("nequip-allegro MLPs have one hidden width; use equal widths to compare")
    two_d, two_w = depth_width(cfg.two_body_mlp_hidden)
    lat_d, lat_w = depth_width(cfg.latent_mlp_hidden)
    out_d, out_w = depth_width(cfg.readout_mlp_hidden)
    return AllegroModel(
        seed=0,
        model_dtype="float32",
        type_names=list(species),
        r_max=cfg.r_max,
        l_max=cfg.l_max,
        parity=cfg.parity,
        radial_chemical_embed={
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": cfg.num_bessels,
            "polynomial_cutoff_p": cfg.envelope_p,
        },
        radial_chemical_embed_dim=cfg.num_scalar_features,
        scalar_embed_mlp_hidden_layers_depth=two_d,
        scalar_embed_mlp_hidden_layers_width=two_w,
        scalar_embed_mlp_nonlinearity=cfg.activation,
        num_layers=cfg.num_layers,
        num_scalar_features=cfg.num_scalar_features,
        num_tensor_features=cfg.num_tensor_features,
        allegro_mlp_hidden_layers_depth=lat_d,
        allegro_mlp_hidden_layers_width=lat_w,
        allegro_mlp_nonlinearity=cfg.activation,
        readout_mlp_hidden_layers_depth=out_d,
        readout_mlp_hidden_layers_width=out_w,
        readout_mlp_nonlinearity=cfg.activation,
        avg_num_neighbors=cfg.avg_num_neighbors,
    ).eval()


def run_case(args: argparse.Namespace) -> dict:
    """One (implementation, preset, size) case in this process; returns a result row."""
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.config import load_config
    from pipeline.data import keys as K
    from pipeline.data.neighbors import collate

    cfg = load_config(args.config, check_files=False)
    expert = getattr(cfg.models, args.preset)
    atoms = pt_co_slab(args.atoms)
    batch = collate([atoms], species=cfg.species, r_max=expert.r_max, dtype=torch.float32, with_targets=False)

    if args.impl == "ours":
        from pipeline.models import build_model

        model = build_model(expert, cfg.species, dtype=torch.float32, seed=0).eval()

        def evaluate(stress: bool = False):
            return model(batch, compute_forces=True, compute_stress=stress)[K.FORCES]
    else:
        from nequip.data import AtomicDataDict, from_ase

        model = _reference_model(expert, cfg.species)

        def evaluate(stress: bool = False):
            data = from_ase(atoms)
            data[AtomicDataDict.POSITIONS_KEY] = data[AtomicDataDict.POSITIONS_KEY].to(torch.float32)
            data[AtomicDataDict.CELL_KEY] = data[AtomicDataDict.CELL_KEY].to(torch.float32)
            data[AtomicDataDict.EDGE_INDEX_KEY] = batch[K.EDGE_INDEX]
            data[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = batch[K.EDGE_CELL_SHIFT].to(torch.float32)
            data[AtomicDataDict.ATOM_TYPE_KEY] = batch[K.SPECIES]
            return model(data)[AtomicDataDict.FORCE_KEY]

    n_params = sum(p.numel() for p in model.parameters())
    rss_before = _maxrss_mib()

    def timed(stress: bool) -> float:
        for _ in range(args.warmup):
            evaluate(stress)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            evaluate(stress)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    time_ef = timed(False)
    peak = _maxrss_mib() - rss_before
    time_efs = timed(True) if args.impl == "ours" else float("nan")
    return {
        "implementation": "ours" if args.impl == "ours" else "nequip-allegro 0.8.3",
        "preset": args.preset,
        "n_atoms": len(atoms),
        "n_edges": int(batch[K.EDGE_INDEX].shape[1]),
        "n_params": n_params,
        "time_ms": time_ef,
        "time_ms_with_stress": time_efs,
        "us_per_atom": time_ef * 1e3 / len(atoms),
        "peak_rss_increase_mib": peak,
    }


def run_ratio(args: argparse.Namespace) -> list[dict]:
    """hf/lf cost ratio of our presets, timing them alternately in one process (robust to load drift)."""
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.config import load_config
    from pipeline.data.neighbors import collate
    from pipeline.models import build_model

    cfg = load_config(args.config, check_files=False)
    models = {
        p: build_model(getattr(cfg.models, p), cfg.species, dtype=torch.float32, seed=0).eval() for p in ("hf", "lf")
    }
    rows = []
    for n_atoms in args.sizes:
        atoms = pt_co_slab(n_atoms)
        batches = {
            p: collate([atoms], species=cfg.species, r_max=m.r_max, dtype=torch.float32, with_targets=False)
            for p, m in models.items()
        }
        times: dict[str, list[float]] = {p: [] for p in models}
        for round_ in range(args.warmup + args.repeats):
            for p, model in models.items():
                start = time.perf_counter()
                model(batches[p])
                if round_ >= args.warmup:
                    times[p].append(time.perf_counter() - start)
        hf, lf = statistics.median(times["hf"]), statistics.median(times["lf"])
        rows.append({
            "n_atoms": len(atoms),
            "hf_over_lf_interleaved": hf / lf,
            "hf_over_lf_interleaved_best": min(times["hf"]) / min(times["lf"]),
        })  # fmt: skip
    return rows


def _spawn(args: argparse.Namespace, impl: str, preset: str, n_atoms: int) -> dict:
    cmd = [
        sys.executable, __file__, "--_case", "--impl", impl, "--preset", preset, "--atoms", str(n_atoms),
        "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads),
    ]  # fmt: skip
    if args.config:
        cmd += ["--config", str(args.config)]
    if impl == "ratio":
        cmd += ["--sizes", *map(str, args.sizes)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.case_timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"  {impl} {preset} {n_atoms}: failed ({tail[0]})", file=sys.stderr)
        return {"implementation": impl, "preset": preset, "n_atoms": n_atoms, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], ratios: list[dict] | None = None):
    """Table with ours/reference ratios and the hf/lf cost ratio per size."""
    import pandas as pd

    df = pd.DataFrame(rows)
    ours = df[df.implementation == "ours"].set_index(["preset", "n_atoms"])
    ref = df[df.implementation != "ours"].set_index(["preset", "n_atoms"])
    if "time_ms" in ref:
        ratio = (ref["time_ms"] / ours["time_ms"]).rename("reference_over_ours")
        df = df.join(ratio, on=["preset", "n_atoms"])
    if {"hf", "lf"} <= set(ours.index.get_level_values(0)):
        hf_lf = (ours.loc["hf", "time_ms"] / ours.loc["lf", "time_ms"]).rename("hf_over_lf_ours")
        df = df.join(hf_lf, on="n_atoms")
    if ratios:
        df = df.join(pd.DataFrame(ratios).set_index("n_atoms"), on="n_atoms")
    return df.sort_values(["preset", "n_atoms", "implementation"], ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="configuration YAML (default config/config.yaml)")
    parser.add_argument("--presets", nargs="+", default=["hf", "lf"], choices=["hf", "lf"])
    parser.add_argument("--sizes", nargs="+", type=int, default=sorted(SLABS), choices=sorted(SLABS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true", help="skip nequip-allegro")
    parser.add_argument("--case-timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--csv", type=Path, default=DEFAULT_OUT / "bench_allegro.csv")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_OUT / "bench_allegro.md")
    parser.add_argument("--_case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "reference", "ratio"], default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="hf", help=argparse.SUPPRESS)
    parser.add_argument("--atoms", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._case:
        print(json.dumps(run_ratio(args) if args.impl == "ratio" else run_case(args)))
        return

    impls = ["ours"] if args.no_reference else ["ours", "reference"]
    rows = []
    for preset in args.presets:
        for n_atoms in args.sizes:
            for impl in impls:
                row = _spawn(args, impl, preset, n_atoms)
                name, ms = row.get("implementation", impl), row.get("time_ms", float("nan"))
                print(f"  {name:22s} {preset} {n_atoms:5d} atoms: {ms:9.1f} ms", file=sys.stderr)
                rows.append(row)
    ratios = None
    if set(args.presets) == {"hf", "lf"}:
        ratios = _spawn(args, "ratio", "hf", 0)
        ratios = ratios if isinstance(ratios, list) else None
        for row in ratios or []:
            ratio, best = row["hf_over_lf_interleaved"], row["hf_over_lf_interleaved_best"]
            print(f"  hf/lf interleaved {row['n_atoms']:5d} atoms: {ratio:.2f} (best {best:.2f})", file=sys.stderr)
    df = summarise(rows, ratios)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.csv, index=False)
    header = (
        f"Energy+forces per evaluation, float32, {args.threads} torch thread(s), median of {args.repeats} after "
        f"{args.warmup} warm-up; peak memory = increase of ru_maxrss during the evaluations, "
        "fresh process per case.\n\n"
    )
    args.markdown.write_text(header + df.to_markdown(index=False, floatfmt=".3g") + "\n")
    print(df.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
