"""Tables and figures of the MoE routing study, from the summaries of :func:`pipeline.train.moe_study.train_variant`.

- table (CSV + Markdown): per dataset and variant, test energy/force MAE, active and total parameters,
  epochs and stability status; every row says whether its labels are DFT (the EMT set is NOT DFT);
- heat map (PNG): share of each element's top-k slots per expert, one panel per dataset and MoE layer,
  for the reference variant (element routing with shared experts, else the first MoE variant);
- PCA (PNG): per-element routing vectors (the heat-map rows of every layer, concatenated), projected
  on their first two principal components, elements coloured by group (EMT set: Ni/Pd/Pt, Cu/Ag/Au, Al;
  periodic-table set, preferred when trained: the families of :data:`pipeline.data.periodic_set.ELEMENT_FAMILIES`).
  Whether the groups separate is measured by the nearest-neighbour purity (share of elements whose
  nearest other element in routing space is in the same group) and the ratio of mean within-group
  to mean between-group distance; both are written under the table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.data.periodic_set import ELEMENT_FAMILIES

GROUPS = {"Ni": "Ni/Pd/Pt", "Pd": "Ni/Pd/Pt", "Pt": "Ni/Pd/Pt", "Cu": "Cu/Ag/Au", "Ag": "Cu/Ag/Au", "Au": "Cu/Ag/Au",
          "Al": "Al"}
_COLOURS = {"Ni/Pd/Pt": "tab:blue", "Cu/Ag/Au": "tab:orange", "Al": "tab:green", "other": "tab:gray"}
_COLOURS.update({family: f"C{i}" for i, family in enumerate(dict.fromkeys(ELEMENT_FAMILIES.values()))})


def element_groups(dataset: str) -> dict[str, str]:
    """Element -> group of the routing PCA: periodic-table families for ``periodic``, else :data:`GROUPS`."""
    return ELEMENT_FAMILIES if dataset == "periodic" else GROUPS
_REFERENCE = ("moe_element_shared", "moe_element", "mole_element_shared", "moe_configuration_shared", "moe_atom_shared")


def read_summaries(paths: Sequence[str | Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def study_table(summaries: Sequence[dict]) -> pd.DataFrame:
    """One row per (dataset, variant)."""
    rows = []
    for s in summaries:
        moe = s["moe"]
        rows.append({
            "dataset": s["dataset"], "labels": s["labels"], "variant": s["variant"],
            "router": moe["router"] if moe["enabled"] else "-",
            "experts": f"{moe['top_k']} of {moe['num_experts']} + {moe['num_shared']} shared" if moe["enabled"] else "-",
            "expert type": ("MoLE" if moe["expert_type"] == "linear" else "MLP") if moe["enabled"] else "-",
            "active params": s["active_params"], "total params": s["total_params"],
            "test E MAE (meV/atom)": round(s["test_energy_mae_mev_atom"], 2),
            "test F MAE (meV/A)": round(s["test_force_mae_mev_a"], 1),
            "epochs (best)": f"{s['epochs']} ({s['best_epoch']})", "stability": s["status"],
            "precision": s["precision"],
        })
    return pd.DataFrame(rows)


def reference_summary(summaries: Sequence[dict], dataset: str) -> dict | None:
    by_variant = {s["variant"]: s for s in summaries if s["dataset"] == dataset and s["load"]}
    return next((by_variant[v] for v in _REFERENCE if v in by_variant), None)


def routing_vectors(summary: dict) -> tuple[list[str], np.ndarray]:
    """Elements present in the test set and their routing vectors ``(n_elements, n_layers * N)``."""
    load = np.asarray(summary["load"])  # [layer, species, expert]
    present = load.sum(axis=(0, 2)) > 0
    species = [s for s, p in zip(summary["species"], present) if p]
    return species, load[:, present, :].transpose(1, 0, 2).reshape(int(present.sum()), -1)


def group_separation(species: Sequence[str], vectors: np.ndarray,
                     groups_of: dict[str, str] = GROUPS) -> dict[str, float]:
    """Nearest-neighbour group purity and within/between mean distance ratio (NaN without two groups)."""
    groups = [groups_of.get(s, "other") for s in species]
    dist = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    hits = [groups[int(np.argmin(dist[i]))] == groups[i] for i in range(len(species))
            if sum(g == groups[i] for g in groups) > 1]
    same = np.array([[a == b for b in groups] for a in groups])
    off = ~np.eye(len(groups), dtype=bool)
    within, between = dist[same & off], dist[~same]
    ratio = float(within.mean() / between.mean()) if within.size and between.size and between.mean() > 0 else float("nan")
    return {"nn_purity": float(np.mean(hits)) if hits else float("nan"), "within_between_ratio": ratio}


def plot_heatmap(summaries: Sequence[dict], datasets: Sequence[str], path: str | Path) -> None:
    refs = [(d, reference_summary(summaries, d)) for d in datasets]
    refs = [(d, s) for d, s in refs if s is not None]
    n_cols = max([len(s["layers"]) for _, s in refs] or [1])
    fig, axes = plt.subplots(max(len(refs), 1), n_cols, figsize=(3.4 * n_cols, 3.4 * max(len(refs), 1)),
                             squeeze=False, layout="constrained")
    for row, (dataset, s) in enumerate(refs):
        species, _ = routing_vectors(s)
        load = np.asarray(s["load"])
        present = [s["species"].index(x) for x in species]
        for col, layer in enumerate(s["layers"]):
            ax = axes[row, col]
            im = ax.imshow(load[col][present], vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(load.shape[-1]))
            ax.set_yticks(range(len(species)), species)
            ax.set_xlabel("expert")
            ax.set_title(f"{dataset}: {layer}\n({s['variant']})", fontsize=8)
        for col in range(len(s["layers"]), n_cols):
            axes[row, col].axis("off")
        fig.colorbar(im, ax=list(axes[row]), shrink=0.8, label="share of top-k slots")
    if not refs:
        axes[0, 0].text(0.5, 0.5, "no MoE variant trained", ha="center")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_pca(summary: dict | None, path: str | Path) -> dict[str, float]:
    fig, ax = plt.subplots(figsize=(5, 4))
    stats = {"nn_purity": float("nan"), "within_between_ratio": float("nan"), "explained": float("nan")}
    if summary is not None:
        species, vectors = routing_vectors(summary)
        centred = vectors - vectors.mean(0)
        _, sing, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred @ vt[:1].T, np.zeros(len(species))]
        groups_of = element_groups(summary["dataset"])
        stats.update(group_separation(species, vectors, groups_of))
        stats["explained"] = float((sing[:2] ** 2).sum() / max((sing**2).sum(), 1e-30))
        for (x, y), symbol in zip(coords, species):
            group = groups_of.get(symbol, "other")
            ax.scatter(x, y, color=_COLOURS[group], s=60, label=group)
            ax.annotate(symbol, (x, y), textcoords="offset points", xytext=(5, 5))
        handles = {h.get_label(): h for h in ax.collections}
        ax.legend(handles.values(), handles.keys(), fontsize=8)
        ax.set_title(f"routing PCA: {summary['dataset']} / {summary['variant']}\n"
                     f"NN purity {stats['nn_purity']:.2f}, within/between {stats['within_between_ratio']:.2f}",
                     fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return stats


def write_report(summaries: Sequence[dict], *, csv: str | Path, md: str | Path, heatmap: str | Path,
                 pca: str | Path) -> pd.DataFrame:
    """Write the table (CSV, Markdown with notes) and the two figures."""
    table = study_table(summaries)
    for path in (csv, md, heatmap, pca):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv, index=False)
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries))
    plot_heatmap(summaries, datasets, heatmap)
    pca_dataset = next((d for d in ("periodic", "emt_alloys") if d in datasets), datasets[0])
    ref = reference_summary(summaries, pca_dataset)
    stats = plot_pca(ref, pca)
    separate = stats["nn_purity"] >= 0.99 and stats["within_between_ratio"] < 1
    notes = [
        "# MoE routing study", "",
        table.to_markdown(index=False), "",
        "Labels: rows of `emt_alloys` are labelled by ASE's EMT, **not DFT**; rows of `periodic` by the SevenNet-0 "
        "teacher, **not DFT**; `pt_co` rows by GPAW PBE (DFT).",
        "Active parameters: shared experts, routers, and top_k of the N routed experts of each MoE layer.",
        "", f"Routing PCA ({pca_dataset}, {ref['variant'] if ref else 'no MoE variant'}): first two components "
        f"explain {stats['explained']:.0%} of the variance; nearest-neighbour group purity {stats['nn_purity']:.2f}, "
        f"mean within-group / between-group distance {stats['within_between_ratio']:.2f}: the groups "
        f"{', '.join(dict.fromkeys(element_groups(pca_dataset).values()))} "
        f"{'separate' if separate else 'do not separate cleanly'}.",
    ]
    Path(md).write_text("\n".join(notes) + "\n")
    return table
