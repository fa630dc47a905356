"""MoE layers where they could pay: in the HF expert, on the Pt+CO set (issue 20; ``moe_study.hf_expert``).

The ``models.hf`` preset is trained dense and as each MoE variant of ``moe_study.hf_expert.variants`` at the dense
model's active parameter count (:func:`pipeline.train.moe_study.train_variant` with ``base_model`` ``hf``), with
the study's budget, for every ``moe_study.seeds`` seed. This module judges them:

- accuracy: test-split energy and force MAE per seed, mean and std rows (the study table's rows,
  :func:`pipeline.train.moe_report.study_table`), and per seed the ratio of the variant's force MAE to the dense
  model's of the same seed (``force_mae_vs_dense``; the mean row averages the ratios);
- cost: one MD step's energy and forces of every trained checkpoint, timed as the MD stage runs it
  (:class:`pipeline.md.evaluator.MixtureEvaluator` with the expert on every atom, the chunk size of
  ``md.centres_per_chunk`` for HF, the Verlet list kept) on a Pt(111)+CO slab of about
  ``moe_study.hf_expert.timing_atoms`` atoms (``analysis.speed`` layers and CO coverage), median of
  ``analysis.speed.repeats`` interleaved repeats after ``warmup``: ``step_ms``, ``us_per_atom`` and
  ``cost_vs_dense`` (the median over seeds of the dense model is the reference);
- the verdict (:func:`verdict`): a MoE variant *pays* when its force MAE is lower than the dense model's on every
  seed and the mean +- std bands are apart (:func:`pipeline.train.moe_report.seedwise` says ``supported``), and
  its MD step costs at most :data:`MAX_COST_RATIO` times the dense one.

Every error is on the test split, which no run trained on or was selected on (selection: validation split).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.analysis._common import device_label, pyplot, save_figure, write_table
from pipeline.analysis.speed import full_expert_evaluator, time_cases, timing_slab
from pipeline.config import Config
from pipeline.devices import DTYPES, resolve_device
from pipeline.models import load_checkpoint
from pipeline.train.moe_report import mean_std, per_seed_rows, seedwise, study_table

log = logging.getLogger(__name__)

#: a MoE HF expert that is more accurate still has to cost at most this much per MD step, relative to dense
MAX_COST_RATIO = 1.2
#: columns of the table, in order
COLUMNS = ("dataset", "split", "variant", "routing", "shared_experts", "routed_experts", "top_k", "active_params",
           "total_params", "seed", "energy_mae_mev_atom", "force_mae_mev_a", "force_mae_vs_dense", "unstable",
           "loss_spikes", "max_loss_jump", "path_jump_mev",
           "step_ms", "us_per_atom", "cost_vs_dense", "n_atoms", "device", "threads", "precision", "best_epoch",
           "epochs", "train_wall_s")


def time_checkpoints(cfg: Config, checkpoints: Mapping[str, str | Path]) -> tuple[dict[str, float], int, str]:
    """Median wall time (s) of one MD step's energy and forces per checkpoint (keys kept), the atom count of
    the timed slab and the device label.

    Each checkpoint evaluates every atom of the slab of :func:`pipeline.analysis.speed.timing_slab` (about
    ``moe_study.hf_expert.timing_atoms`` atoms); the cases are timed in turn (interleaved repeats), so that a
    change of machine load hits every case alike.
    """
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    s = cfg.analysis.speed
    atoms = timing_slab(cfg.moe_study.hf_expert.timing_atoms, layers=s.layers, co_coverage=s.co_coverage,
                        lattice_constant_a=cfg.analysis.lattice_constant_a)
    cases = {}
    for key, path in checkpoints.items():
        model = load_checkpoint(path, species=tuple(cfg.species), dtype=DTYPES[s.dtype], map_location=device).eval()
        cases[key] = (full_expert_evaluator(cfg, model, "hf", atoms, device), atoms)
    seconds = time_cases(cases, repeats=s.repeats, warmup=s.warmup)
    for key, t in seconds.items():
        log.info("moe_hf: %s: %.1f ms per step on %d atoms", key, 1000.0 * t, len(atoms))
    return seconds, len(atoms), device_label(device)


def moe_hf_table(cfg: Config, summaries: Sequence[dict], seconds: Mapping[tuple[str, int], float], *, n_atoms: int,
                 device: str) -> pd.DataFrame:
    """The table (:data:`COLUMNS`): per variant the per-seed rows, then ``mean`` and ``std`` rows.

    ``summaries``: those of :func:`pipeline.train.moe_study.train_variant` (``base_model`` hf, dataset pt_co);
    ``seconds``: the step time per ``(variant, seed)`` (:func:`time_checkpoints`).
    """
    wrong = sorted({(s["dataset"], s.get("base_model")) for s in summaries} - {("pt_co", "hf")})
    if wrong:
        raise ValueError(f"the HF-expert MoE table takes runs of the hf preset on pt_co, got (dataset, base) {wrong}")
    table = study_table(summaries)
    seeds = per_seed_rows(table)
    dense = seeds[seeds["variant"] == "dense"].set_index("seed")
    if dense.empty:
        raise ValueError("the HF-expert MoE table needs the dense runs (the reference)")
    dense_step = float(np.median([seconds[("dense", int(x))] for x in dense.index]))
    rows = []
    for _, row in table.iterrows():
        out = row.to_dict()
        out.update(split="test", n_atoms=n_atoms, device=device, threads=cfg.torch_threads,
                   precision=cfg.analysis.speed.dtype)
        if not isinstance(row["seed"], str):
            seed = int(row["seed"])
            step = seconds[(row["variant"], seed)]
            ref = float(dense.loc[seed, "force_mae_mev_a"]) if seed in dense.index else float("nan")
            out.update(step_ms=1000.0 * step, us_per_atom=1e6 * step / n_atoms, cost_vs_dense=step / dense_step,
                       force_mae_vs_dense=float(row["force_mae_mev_a"]) / ref)
        rows.append(out)
    out = pd.DataFrame(rows)
    for variant, block in out.groupby("variant", sort=False):  # mean / std rows of the per-seed columns
        for column in ("step_ms", "us_per_atom", "cost_vs_dense", "force_mae_vs_dense"):
            mean, std, _ = mean_std(block, "pt_co", variant, column)
            out.loc[block.index[block["seed"] == "mean"], column] = mean
            out.loc[block.index[block["seed"] == "std"], column] = std
    return out[list(COLUMNS)]


def verdict(table: pd.DataFrame) -> pd.DataFrame:
    """Per MoE variant: accuracy verdicts against dense (force, energy;
    :func:`~pipeline.train.moe_report.seedwise`: mean +- std over seeds, held by every seed), seeds with a lower
    force MAE than dense of the same seed, the cost ratio and ``pays`` (see the module docstring)."""
    seeds = per_seed_rows(table)
    rows = []
    for variant in dict.fromkeys(seeds["variant"]):
        if variant == "dense":
            continue
        mine = seeds[seeds["variant"] == variant]
        force = seedwise(table, "pt_co", variant, "dense", "force_mae_mev_a")
        energy = seedwise(table, "pt_co", variant, "dense", "energy_mae_mev_atom")
        lower = int((mine["force_mae_vs_dense"].astype(float) < 1.0).sum())
        cost = float(mine["cost_vs_dense"].astype(float).mean())
        pays = force == "supported" and lower == len(mine) and cost <= MAX_COST_RATIO
        rows.append({"variant": variant, "force_mae_lower": force, "energy_mae_lower": energy,
                     "seeds_force_lower": f"{lower}/{len(mine)}", "cost_vs_dense": cost,
                     "pays": "yes" if pays else "no"})
    return pd.DataFrame(rows, columns=["variant", "force_mae_lower", "energy_mae_lower", "seeds_force_lower",
                                       "cost_vs_dense", "pays"])


def plot_moe_hf(table: pd.DataFrame, png: str | Path) -> None:
    """Test force MAE against the cost per atom of an MD step, one colour per variant: every seed (dots) and
    the mean +- std (error bars in both directions)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for i, (variant, block) in enumerate(table.groupby("variant", sort=False)):
        seeds = per_seed_rows(block)
        mean = block[block["seed"] == "mean"].iloc[0]
        std = block[block["seed"] == "std"].iloc[0]
        colour = f"C{i}"
        ax.scatter(seeds["us_per_atom"], seeds["force_mae_mev_a"], color=colour, alpha=0.5, s=18)
        ax.errorbar(mean["us_per_atom"], mean["force_mae_mev_a"], xerr=std["us_per_atom"],
                    yerr=std["force_mae_mev_a"], color=colour, marker="o", capsize=3,
                    label=f"{variant} ({int(mean['active_params'])} active / {int(mean['total_params'])} total)")
    first = table.iloc[0]
    ax.set_xlabel(f"MD step cost (us per atom, {int(first['n_atoms'])} atoms, {first['device']})")
    ax.set_ylabel("test force MAE (meV/A)")
    ax.set_title("HF expert on Pt+CO: dense vs MoE at equal active parameters")
    ax.legend(fontsize=8)
    save_figure(fig, png)


def write_moe_hf(cfg: Config, summaries: Sequence[dict], checkpoints: Sequence[str | Path], *, csv: str | Path,
                 md: str | Path, png: str | Path) -> pd.DataFrame:
    """Time the checkpoints (one per summary, same order), write the table (CSV, Markdown with the verdicts) and
    the figure; returns the table."""
    if len(checkpoints) != len(summaries):
        raise ValueError(f"{len(summaries)} summaries but {len(checkpoints)} checkpoints: give one per run")
    keyed = {(s["variant"], int(s["seed"])): path for s, path in zip(summaries, checkpoints)}
    seconds, n_atoms, device = time_checkpoints(cfg, keyed)
    table = moe_hf_table(cfg, summaries, seconds, n_atoms=n_atoms, device=device)
    verdicts = verdict(table)
    wall_h = float(per_seed_rows(table)["train_wall_s"].sum()) / 3600.0
    notes = [
        "Errors on the test split of the Pt+CO set (GPAW PBE), which no run trained on or was selected on "
        "(each run keeps the epoch of its lowest validation loss). Every variant starts from the models.hf preset "
        "and has the dense model's active parameter count (expert width solved; total beside). Same data, epochs, "
        "optimiser; the seed sets initial weights and batch order. mean / std rows over seeds (sample std).",
        f"Cost: one MD step's energy and forces, every atom on the expert, {n_atoms} atoms (Pt(111) slab, CO "
        f"coverage {cfg.analysis.speed.co_coverage:g}), {device}, {cfg.torch_threads} torch thread(s), "
        f"{cfg.analysis.speed.dtype}, median of {cfg.analysis.speed.repeats} interleaved repeats; cost_vs_dense "
        "against the median over seeds of the dense step.",
        "Stability (pipeline.train.stability, moe_study.stability): loss_spikes counts epochs whose mean training "
        f"loss exceeds {cfg.moe_study.stability.spike_factor:g}x the lowest earlier epoch's, max_loss_jump is the "
        "largest such ratio, path_jump_mev the largest energy-work mismatch along MD-like paths of test frames; "
        f"unstable = 1 when spikes exceed {cfg.moe_study.stability.max_loss_spikes}, a gradient was non-finite or "
        f"the path mismatch exceeds {cfg.moe_study.stability.max_path_jump_mev:g} meV.",
        f"A MoE variant pays when its force MAE is lower than dense on every seed with the mean +- std bands apart, "
        f"at a cost of at most {MAX_COST_RATIO:g}x dense per step.",
        "Verdicts:\n\n" + verdicts.to_markdown(index=False, floatfmt=".3f"),
        f"Training time of all runs: {wall_h:.2f} CPU-hours (sum of the epochs' wall time).",
    ]
    write_table(table, csv=csv, md=md, title="MoE layers in the HF expert (Pt+CO, test split)", notes=notes)
    plot_moe_hf(table, png)
    return table
