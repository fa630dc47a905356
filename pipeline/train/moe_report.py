"""Tables and figures of the MoE routing study, from the summaries of :func:`pipeline.train.moe_study.train_variant`.

- the study table (CSV + Markdown, :func:`study_table`): one row per dataset, variant and seed (``seed`` an
  integer), then a ``mean`` and a ``std`` row (sample standard deviation over the seeds) per dataset and
  variant; columns ``dataset`` and :data:`COLUMNS`, then the stability measures and the training record.
  Errors are on each dataset's ``test`` split; rows say whether their labels are DFT (EMT and the SevenNet-0
  teacher are NOT DFT);
- the claims of arXiv 2603.07977, one verdict per claim, dataset and metric, computed from that table
  (:func:`claims`; the rule is stated in the Markdown);
- routing analysis of the reference variant (element routing with shared experts, else the first MoE
  variant) on the periodic-table set when trained (else the EMT set, else Pt+CO): per-element routing vectors
  (:func:`routing_vectors`: the element routers' probabilities of every MoE layer, concatenated; the test-set
  share of top-k slots for other routers), their k-nearest-neighbour agreement with periodic-table labels
  (family, group, period; :func:`knn_agreement`) and its permutation-test p-value against shuffled element
  labels (:func:`permutation_test`), per seed (table :func:`routing_table`); heat map and PCA (PNG, PCA coloured
  by periodic-table group, marker by period);
- learning curves (PNG): validation force MAE per epoch, mean over seeds per variant; the table's
  ``late_change_*_pct`` columns say whether each run converged (:func:`pipeline.train.convergence.late_change`
  of the best-so-far validation errors).
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
from ase.data import atomic_numbers

from pipeline.config import MoEStudyRoutingConfig
from pipeline.data.periodic_set import ELEMENT_FAMILIES
from pipeline.train.convergence import late_change
from pipeline.train.stability import max_loss_jump

#: the study table's columns after ``dataset`` (issue 20), in order
COLUMNS = ("variant", "routing", "shared_experts", "routed_experts", "top_k", "active_params", "total_params", "seed",
           "energy_mae_mev_atom", "force_mae_mev_a", "unstable")
#: further columns of the study table: stability measures and the training record
EXTRA_COLUMNS = ("expert_type", "loss_spikes", "max_loss_jump", "nonfinite_grads", "path_jump_mev", "epochs",
                 "best_epoch", "late_change_energy_pct", "late_change_force_pct", "train_wall_s", "status", "labels")
_AGGREGATED = ("energy_mae_mev_atom", "force_mae_mev_a", "unstable", "loss_spikes", "max_loss_jump",
               "nonfinite_grads", "path_jump_mev", "epochs", "best_epoch", "late_change_energy_pct",
               "late_change_force_pct", "train_wall_s")
GROUPS = {"Ni": "Ni/Pd/Pt", "Pd": "Ni/Pd/Pt", "Pt": "Ni/Pd/Pt", "Cu": "Cu/Ag/Au", "Ag": "Cu/Ag/Au", "Au": "Cu/Ag/Au",
          "Al": "Al"}
_COLOURS = {"Ni/Pd/Pt": "tab:blue", "Cu/Ag/Au": "tab:orange", "Al": "tab:green", "other": "tab:gray"}
_COLOURS.update({family: f"C{i}" for i, family in enumerate(dict.fromkeys(ELEMENT_FAMILIES.values()))})
_REFERENCE = ("moe_element_shared", "moe_element", "moe_element_shared25", "moe_element_shared75",
              "mole_element_shared", "moe_configuration_shared", "moe_global_shared", "moe_atom_shared")
_ORDER = ("dense", *_REFERENCE)  # rows of the table and colours of the learning curves
#: fewest seeds on each side for a verdict on a claim (a verdict from one or two trainings proves nothing)
MIN_SEEDS = 3
_PCA_DATASETS = ("periodic", "emt_alloys", "pt_co")
#: fewest elements (present in the test set) for the routing score: Pt/C/O cannot show a periodic-table pattern
MIN_ROUTING_ELEMENTS = 6
_PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)
_MARKERS = {1: "P", 2: "o", 3: "s", 4: "^", 5: "D", 6: "v", 7: "*"}


def element_groups(dataset: str) -> dict[str, str]:
    """Element -> group of the routing PCA: periodic-table families for ``periodic``, else :data:`GROUPS`."""
    return ELEMENT_FAMILIES if dataset == "periodic" else GROUPS


def periodic_position(symbol: str) -> tuple[int, int]:
    """``(group 1-18, period)`` of an element; lanthanides and actinides are put in group 3.

    >>> [periodic_position(s) for s in ("H", "O", "Na", "Ti", "Hf", "Pt", "Pb")]
    [(1, 1), (16, 2), (1, 3), (4, 4), (4, 6), (10, 6), (14, 6)]
    """
    z = atomic_numbers[symbol]
    period = next(i + 1 for i, end in enumerate(_PERIOD_ENDS) if z <= end)
    pos = z - (_PERIOD_ENDS[period - 2] if period > 1 else 0)  # 1-based place in the period
    if period == 1:
        return (1 if z == 1 else 18), 1
    if period <= 3:
        return (pos if pos <= 2 else pos + 10), period
    if period <= 5:
        return pos, period
    return (pos if pos <= 2 else 3 if pos <= 17 else pos - 14), period


def element_labels(species: Sequence[str], dataset: str) -> dict[str, list[str]]:
    """Labels of the routing score per element: ``family`` (:func:`element_groups`), ``group`` and ``period``."""
    families = element_groups(dataset)
    return {"family": [families.get(s, "other") for s in species],
            "group": [str(periodic_position(s)[0]) for s in species],
            "period": [str(periodic_position(s)[1]) for s in species]}


def read_summaries(paths: Sequence[str | Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


# -- the study table --------------------------------------------------------------------------------------------
def seed_rows(summaries: Sequence[dict]) -> pd.DataFrame:
    """One row per summary (dataset, variant, seed): ``dataset``, :data:`COLUMNS`, :data:`EXTRA_COLUMNS`."""
    rows = []
    for s in summaries:
        rows.append({
            "dataset": s["dataset"], "variant": s["variant"], "routing": s["routing"],
            "shared_experts": int(s["shared_experts"]), "routed_experts": int(s["routed_experts"]),
            "top_k": int(s["top_k"]), "active_params": int(s["active_params"]), "total_params": int(s["total_params"]),
            "seed": int(s["seed"]), "energy_mae_mev_atom": float(s["test_energy_mae_mev_atom"]),
            "force_mae_mev_a": float(s["test_force_mae_mev_a"]), "unstable": int(bool(s["unstable"])),
            "expert_type": s["expert_type"], "loss_spikes": int(s["loss_spikes"]),
            "max_loss_jump": max_loss_jump(s["curve"]["train_loss"]),
            "nonfinite_grads": int(s["nonfinite_grads"]), "path_jump_mev": float(s["path_jump_mev"]),
            "epochs": int(s["epochs"]), "best_epoch": int(s["best_epoch"]),
            "late_change_energy_pct": late_change(np.fmin.accumulate(s["curve"].get("val_energy_mae_mev_atom", []))),
            "late_change_force_pct": late_change(np.fmin.accumulate(s["curve"].get("val_force_mae_mev_a", []))),
            "train_wall_s": float(s["train_wall_s"]), "status": s["status"], "labels": s["labels"],
        })
    return pd.DataFrame(rows, columns=["dataset", *COLUMNS, *EXTRA_COLUMNS])


def study_table(summaries: Sequence[dict]) -> pd.DataFrame:
    """Per-seed rows (ordered by dataset, variant, seed) followed, per dataset and variant, by a ``mean`` and a
    ``std`` row (``seed`` = ``mean`` / ``std``; sample std, ddof 1, NaN for one seed; ``unstable`` becomes the
    fraction of unstable seeds; ``status`` says how many seeds)."""
    per_seed = seed_rows(summaries)
    order = {v: i for i, v in enumerate(_ORDER)}
    blocks = []
    for (dataset, variant), block in per_seed.groupby(["dataset", "variant"], sort=False):
        block = block.sort_values("seed")
        stats = []
        for name, func in (("mean", "mean"), ("std", "std")):
            row = block.iloc[0].to_dict()
            row.update({c: float(getattr(block[c].astype(float), func)()) for c in _AGGREGATED})
            row.update(seed=name, status=f"{len(block)} seeds")
            stats.append(row)
        blocks.append((dataset, order.get(variant, -1), pd.concat([block, pd.DataFrame(stats)], ignore_index=True)))
    datasets = list(dict.fromkeys(per_seed["dataset"]))
    blocks.sort(key=lambda b: (datasets.index(b[0]), b[1]))
    columns = ["dataset", *COLUMNS, *EXTRA_COLUMNS]
    return pd.concat([b for _, _, b in blocks], ignore_index=True)[columns] if blocks else pd.DataFrame(columns=columns)


def per_seed_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows of a :func:`study_table` (without its ``mean`` and ``std`` rows)."""
    return table[table["seed"].map(lambda s: not isinstance(s, str))]


def mean_std(table: pd.DataFrame, dataset: str, variant: str, column: str) -> tuple[float, float, int] | None:
    """``(mean, sample std, seeds)`` of ``column`` over the per-seed rows of ``dataset`` and ``variant`` (std NaN
    for one seed); ``None`` when the variant has no rows."""
    seeds = per_seed_rows(table)
    rows = seeds[(seeds["dataset"] == dataset) & (seeds["variant"] == variant)]
    if rows.empty:
        return None
    values = rows[column].astype(float)
    return float(values.mean()), float(values.std()) if len(values) > 1 else float("nan"), len(values)


def _fmt(stat: tuple[float, float, int] | None, digits: int = 1) -> str:
    if stat is None:
        return "not trained"
    mean, std, n = stat
    return f"{mean:.{digits}f} +- {std:.{digits}f} (n={n})" if np.isfinite(std) else f"{mean:.{digits}f} (n={n})"


def _too_few(seeds: int) -> str:
    return f"inconclusive ({seeds} of {MIN_SEEDS} seeds)"


def better(a: tuple[float, float, int] | None, b: tuple[float, float, int] | None) -> str:
    """Verdict on "a is lower than b" from mean +- std over seeds: ``supported`` when ``mean_a + std_a <
    mean_b - std_b``, ``contradicted`` when ``mean_a - std_a > mean_b + std_b``, else ``inconclusive``
    (the bands overlap; also with fewer than :data:`MIN_SEEDS` seeds on either side); ``not tested`` when a
    variant is missing."""
    if a is None or b is None:
        return "not tested (variant not trained)"
    (ma, sa, na), (mb, sb, nb) = a, b
    if min(na, nb) < MIN_SEEDS:
        return _too_few(min(na, nb))
    if ma + sa < mb - sb:
        return "supported"
    if ma - sa > mb + sb:
        return "contradicted"
    return "inconclusive (within seed scatter)"


def seeds_reversing(table: pd.DataFrame, dataset: str, a: str, b: str, column: str, verdict: str) -> list[int]:
    """Seeds (trained for both ``a`` and ``b`` on ``dataset``, paired by seed number) against a ``supported``
    (``a`` lower) or ``contradicted`` (``a`` higher) ``verdict`` of :func:`better` on ``column``: a verdict
    stands only when it holds for each seed, not just for the mean +- std bands. Empty for other verdicts."""
    if verdict not in ("supported", "contradicted"):
        return []
    seeds = per_seed_rows(table)
    mine = seeds[seeds["dataset"] == dataset]
    va = mine[mine["variant"] == a].set_index("seed")[column].astype(float)
    vb = mine[mine["variant"] == b].set_index("seed")[column].astype(float)
    common = sorted(set(va.index) & set(vb.index))
    if verdict == "supported":
        return [int(s) for s in common if not va[s] < vb[s]]
    return [int(s) for s in common if not va[s] > vb[s]]


def seedwise(table: pd.DataFrame, dataset: str, a: str, b: str, column: str) -> str:
    """:func:`better` on the mean +- std over seeds of ``a`` and ``b``, demoted to ``inconclusive`` when some
    seed does not agree with it (:func:`seeds_reversing`)."""
    verdict = better(mean_std(table, dataset, a, column), mean_std(table, dataset, b, column))
    against = seeds_reversing(table, dataset, a, b, column, verdict)
    if against:
        return f"inconclusive ({verdict} by mean +- std, not in seed {', '.join(map(str, against))})"
    return verdict


#: claims of arXiv 2603.07977 tested by comparing two variants: (claim, better variant, worse variant)
PAIR_CLAIMS = (
    ("sparse activation with shared experts beats the dense model at equal active parameters",
     "moe_element_shared", "dense"),
    ("shared experts help: element-routed MoE with shared experts beats it without (same active experts)",
     "moe_element_shared", "moe_element"),
    ("non-linear MoE beats MoLE when shared experts are present", "moe_element_shared", "mole_element_shared"),
    ("element-wise routing beats configuration-level routing", "moe_element_shared", "moe_configuration_shared"),
)
_METRICS = (("force_mae_mev_a", "test force MAE (meV/A)", 1), ("energy_mae_mev_atom", "test energy MAE (meV/atom)", 2))


def _instability_claim(table: pd.DataFrame, dataset: str) -> dict:
    g = mean_std(table, dataset, "moe_global_shared", "unstable")
    e = mean_std(table, dataset, "moe_element_shared", "unstable")
    jump_g = mean_std(table, dataset, "moe_global_shared", "path_jump_mev")
    jump_e = mean_std(table, dataset, "moe_element_shared", "path_jump_mev")
    if g is None or e is None:
        verdict = "not tested (variant not trained)"
    elif min(g[2], e[2]) < MIN_SEEDS:
        verdict = _too_few(min(g[2], e[2]))
    elif g[0] >= 0.5 and g[0] > e[0]:
        verdict = "supported"
    elif g[0] > e[0]:
        verdict = "partly (some global seeds unstable)"
    elif g[0] == 0:
        verdict = "contradicted (no global seed unstable)"
    else:
        verdict = "contradicted (element routing as unstable)"
    return {"dataset": dataset, "claim": "global MoE routing often leads to numerical instability",
            "metric": "unstable fraction of seeds (max path jump, meV)",
            "better": f"global: {_fmt(g, 2)} ({_fmt(jump_g, 3)})",
            "worse": f"element: {_fmt(e, 2)} ({_fmt(jump_e, 3)})",
            "verdict": verdict}


def _split_claim(table: pd.DataFrame, dataset: str) -> dict:
    variants = {"1/4": "moe_element_shared25", "1/2": "moe_element_shared", "3/4": "moe_element_shared75"}
    stats = {k: mean_std(table, dataset, v, "force_mae_mev_a") for k, v in variants.items()}
    shares = {k: table[(table["dataset"] == dataset) & (table["variant"] == v)][["shared_experts", "top_k"]]
              for k, v in variants.items()}
    if any(s is None for s in stats.values()):
        verdict = "not tested (variant not trained)"
    else:
        others = [seedwise(table, dataset, variants["1/2"], variants[k], "force_mae_mev_a") for k in ("1/4", "3/4")]
        fewest = min(n for _, _, n in stats.values())
        verdict = ("supported" if all(o == "supported" for o in others) else
                   "contradicted" if any(o == "contradicted" for o in others) else
                   _too_few(fewest) if fewest < MIN_SEEDS else "inconclusive (within seed scatter)")
    described = ", ".join(f"{k} ({int(s.iloc[0, 0])} shared + {int(s.iloc[0, 1])} routed): {_fmt(stats[k])}"
                          for k, s in shares.items() if not s.empty)
    return {"dataset": dataset, "claim": "about half of the active experts shared is best (paper body, as summarised "
            "in the seed notes; not in the abstract)", "metric": "test force MAE (meV/A)",
            "better": described or "not trained", "worse": "", "verdict": verdict}


def claims(table: pd.DataFrame, routing: pd.DataFrame | None = None, *, alpha: float = 0.05) -> pd.DataFrame:
    """One verdict per claim, dataset and metric, computed from the study table (and the routing table).

    Pair claims use :func:`seedwise` on the per-seed rows (:func:`better`, held by every seed); the instability
    claim is ``supported`` when at least half of the global-routing seeds are unstable and more than of element
    routing with shared experts; the periodic-table claim is ``supported`` when the family-label p-value is below
    ``alpha`` for every seed of the routing analysis, ``partly`` for some, ``not supported`` for none.
    """
    rows = []
    for dataset in dict.fromkeys(table["dataset"]):
        for claim, a, b in PAIR_CLAIMS:
            for column, name, digits in _METRICS:
                sa, sb = mean_std(table, dataset, a, column), mean_std(table, dataset, b, column)
                rows.append({"dataset": dataset, "claim": claim, "metric": name, "better": f"{a}: {_fmt(sa, digits)}",
                             "worse": f"{b}: {_fmt(sb, digits)}", "verdict": seedwise(table, dataset, a, b, column)})
        rows.append(_instability_claim(table, dataset))
        rows.append(_split_claim(table, dataset))
    if routing is not None and not routing.empty:
        fam = routing[routing["label"] == "family"]
        for dataset, block in fam.groupby("dataset", sort=False):
            hits = int((block["p_value"] < alpha).sum())
            verdict = ("supported" if hits == len(block) else "partly" if hits else "not supported")
            rows.append({"dataset": dataset, "claim": "routing aligns with periodic-table trends",
                         "metric": f"{int(block['knn'].iloc[0])}-NN family agreement, permutation p",
                         "better": f"{block['variant'].iloc[0]}: score "
                                   f"{_fmt((block['score'].mean(), block['score'].std(), len(block)), 2)} "
                                   f"(chance {block['chance'].mean():.2f}), p = "
                                   + ", ".join(f"{p:.3g}" for p in block["p_value"]),
                         "worse": "", "verdict": f"{verdict} ({hits} of {len(block)} seeds p < {alpha})"})
    return pd.DataFrame(rows, columns=["dataset", "claim", "metric", "better", "worse", "verdict"])


# -- routing analysis -------------------------------------------------------------------------------------------
def reference_summaries(summaries: Sequence[dict], dataset: str) -> list[dict]:
    """The summaries (all seeds) of the first variant of :data:`_REFERENCE` with routing data on ``dataset``."""
    by_variant: dict[str, list[dict]] = {}
    for s in summaries:
        if s["dataset"] == dataset and (s.get("router_probs") or s.get("load")):
            by_variant.setdefault(s["variant"], []).append(s)
    variant = next((v for v in _REFERENCE if v in by_variant), None)
    return sorted(by_variant[variant], key=lambda s: s["seed"]) if variant else []


def reference_summary(summaries: Sequence[dict], dataset: str) -> dict | None:
    """The first seed of :func:`reference_summaries` (``None`` without a MoE variant)."""
    refs = reference_summaries(summaries, dataset)
    return refs[0] if refs else None


def routing_matrix(summary: dict) -> tuple[np.ndarray, str]:
    """``(n_layers, n_species, N)``: element routers' probabilities when recorded, else test-set top-k slot shares."""
    if summary.get("router_probs"):
        return np.asarray(summary["router_probs"], dtype=float), "router probability"
    return np.asarray(summary["load"], dtype=float), "share of top-k slots"


def routing_vectors(summary: dict) -> tuple[list[str], np.ndarray]:
    """Elements and their routing vectors ``(n_elements, n_layers * N)`` (:func:`routing_matrix` rows of every
    layer, concatenated): router probabilities of the elements in the training frames (the others' routers
    never learned), else the test-set slot shares of the elements in the test frames."""
    matrix, what = routing_matrix(summary)
    if what == "router probability":
        trained = set(summary.get("train_species", summary["species"]))
        present = np.array([s in trained for s in summary["species"]])
    else:
        present = matrix.sum(axis=(0, 2)) > 0
    species = [s for s, p in zip(summary["species"], present) if p]
    return species, matrix[:, present, :].transpose(1, 0, 2).reshape(int(present.sum()), -1)


def neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indices of each row's k nearest other rows (Euclidean; ties by index)."""
    dist = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    return np.argsort(dist, axis=1, kind="stable")[:, : min(k, len(vectors) - 1)]


def _agreement(nn: np.ndarray, codes: np.ndarray) -> float:
    counts = np.bincount(codes)
    eligible = counts[codes] > 1  # an element alone in its class cannot agree with anyone
    if not eligible.any():
        return float("nan")
    return float((codes[nn] == codes[:, None]).mean(axis=1)[eligible].mean())


def knn_agreement(vectors: np.ndarray, labels: Sequence[str], k: int) -> float:
    """Mean share of each element's ``k`` nearest neighbours (routing space) with its label, over the elements
    whose label some other element shares (NaN when none does)."""
    return _agreement(neighbours(vectors, k), np.unique(np.asarray(labels), return_inverse=True)[1])


def permutation_test(vectors: np.ndarray, labels: Sequence[str], *, k: int, permutations: int,
                     seed: int) -> tuple[float, float, float]:
    """``(score, p-value, mean shuffled score)`` of :func:`knn_agreement` against shuffled element labels.

    ``p = (1 + #{shuffles scoring >= score}) / (1 + permutations)``; the shuffles are seeded.
    """
    nn = neighbours(vectors, k)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    score = _agreement(nn, codes)
    rng = np.random.default_rng([seed, 0x9E57])
    null = np.array([_agreement(nn, rng.permutation(codes)) for _ in range(permutations)])
    if not np.isfinite(score):
        return score, float("nan"), float("nan")
    return score, float((1 + np.sum(null >= score - 1e-12)) / (1 + permutations)), float(np.nanmean(null))


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


def routing_table(summaries: Sequence[dict], cfg: MoEStudyRoutingConfig) -> pd.DataFrame:
    """Per dataset, seed of the reference variant and label (family, group, period): the k-NN agreement score,
    its permutation p-value and the mean shuffled score (``chance``); datasets with fewer than
    :data:`MIN_ROUTING_ELEMENTS` elements are left out."""
    rows = []
    for dataset in dict.fromkeys(s["dataset"] for s in summaries):
        for s in reference_summaries(summaries, dataset):
            species, vectors = routing_vectors(s)
            if len(species) < MIN_ROUTING_ELEMENTS:
                continue
            for label, values in element_labels(species, dataset).items():
                score, p, chance = permutation_test(vectors, values, k=cfg.knn, permutations=cfg.permutations,
                                                    seed=cfg.seed)
                rows.append({"dataset": dataset, "variant": s["variant"], "seed": int(s["seed"]), "label": label,
                             "n_elements": len(species), "n_classes": len(set(values)), "knn": cfg.knn,
                             "score": score, "chance": chance, "p_value": p, "permutations": cfg.permutations,
                             "vectors": routing_matrix(s)[1]})
    return pd.DataFrame(rows, columns=["dataset", "variant", "seed", "label", "n_elements", "n_classes", "knn", "score",
                                       "chance", "p_value", "permutations", "vectors"])


# -- figures ----------------------------------------------------------------------------------------------------
def _periodic_order(species: Sequence[str]) -> list[int]:
    """Indices of ``species`` sorted by periodic-table group, then period."""
    return sorted(range(len(species)), key=lambda i: periodic_position(species[i]))


def plot_heatmap(summaries: Sequence[dict], datasets: Sequence[str], path: str | Path) -> None:
    """Per dataset (rows) and MoE layer (columns): the reference variant's routing of each element (first seed),
    elements sorted by group and period; one colour scale per dataset, from 0 to its largest value."""
    refs = [(d, reference_summary(summaries, d)) for d in datasets]
    refs = [(d, s) for d, s in refs if s is not None]
    n_cols = max([len(s["layers"]) for _, s in refs] or [1])
    heights = [max(3.0, 0.16 * len(routing_vectors(s)[0])) for _, s in refs] or [3.0]
    fig, axes = plt.subplots(max(len(refs), 1), n_cols, figsize=(3.4 * n_cols, sum(heights) + 0.8), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": heights})
    for row, (dataset, s) in enumerate(refs):
        species, _ = routing_vectors(s)
        matrix, what = routing_matrix(s)
        order = _periodic_order(species)
        rows = [s["species"].index(species[i]) for i in order]
        top = float(matrix[:, rows].max()) if matrix.size else 1.0
        for col, layer in enumerate(s["layers"]):
            ax = axes[row, col]
            im = ax.imshow(matrix[col][rows], vmin=0, vmax=top, cmap="viridis", aspect="auto")
            ax.set_xticks(range(matrix.shape[-1]))
            ax.set_yticks(range(len(rows)), [species[i] for i in order], fontsize=6)
            ax.set_xlabel("expert")
            ax.set_title(f"{dataset}: {layer}\n({s['variant']}, seed {s['seed']})", fontsize=8)
        for col in range(len(s["layers"]), n_cols):
            axes[row, col].axis("off")
        fig.colorbar(im, ax=list(axes[row]), shrink=0.8, label=what)
    if not refs:
        axes[0, 0].text(0.5, 0.5, "no MoE variant trained", ha="center")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pca_coordinates(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """First two principal-component coordinates ``(n, 2)`` and the share of variance they explain."""
    centred = vectors - vectors.mean(0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.c_[coords, np.zeros(len(vectors))]
    return coords, float((sing[:2] ** 2).sum() / max((sing**2).sum(), 1e-30))


def plot_pca(summary: dict | None, path: str | Path, routing: pd.DataFrame | None = None) -> dict[str, float]:
    """PCA of the per-element routing vectors of ``summary``: colour = periodic-table group, marker = period;
    the title gives the family, group and period k-NN scores and p-values of ``routing`` for this seed."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    stats = {"nn_purity": float("nan"), "within_between_ratio": float("nan"), "explained": float("nan")}
    if summary is not None:
        species, vectors = routing_vectors(summary)
        coords, stats["explained"] = pca_coordinates(vectors)
        stats.update(group_separation(species, vectors, element_groups(summary["dataset"])))
        cmap = plt.get_cmap("tab20")
        for (x, y), symbol in zip(coords, species):
            group, period = periodic_position(symbol)
            ax.scatter(x, y, color=cmap((group - 1) / 17), marker=_MARKERS[period], s=60, edgecolor="k", linewidth=0.4)
            ax.annotate(symbol, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        groups = sorted({periodic_position(s)[0] for s in species})
        periods = sorted({periodic_position(s)[1] for s in species})
        handles = [plt.Line2D([], [], color=cmap((g - 1) / 17), marker="o", ls="", label=f"group {g}") for g in groups]
        handles += [plt.Line2D([], [], color="k", marker=_MARKERS[p], ls="", mfc="none", label=f"period {p}")
                    for p in periods]
        ax.legend(handles=handles, fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
        title = f"routing PCA: {summary['dataset']} / {summary['variant']} (seed {summary['seed']})"
        if routing is not None and not routing.empty:
            mine = routing[(routing["dataset"] == summary["dataset"]) & (routing["seed"] == summary["seed"])]
            title += "".join(f"\n{r.label}: {r.knn}-NN agreement {r.score:.2f} (chance {r.chance:.2f}, "
                             f"p = {r.p_value:.3g})" for r in mine.itertuples())
        ax.set_title(title, fontsize=7)
        ax.set_xlabel(f"PC 1 (PC 1+2: {stats['explained']:.0%} of the variance)")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return stats


def plot_curves(summaries: Sequence[dict], path: str | Path) -> None:
    """Validation force MAE per epoch (log scale), one panel per dataset, mean over seeds per variant (band:
    min to max over seeds)."""
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries)) or ["-"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False, layout="constrained")
    for ax, dataset in zip(axes[0], datasets):
        present = {s["variant"] for s in summaries if s["dataset"] == dataset}
        for i, variant in enumerate(_ORDER):  # a fixed colour per variant in every panel
            if variant not in present:
                continue
            curves = [s["curve"]["val_force_mae_mev_a"] for s in summaries
                      if s["dataset"] == dataset and s["variant"] == variant and s.get("curve", {}).get("epoch")]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            values = np.array([c[:n] for c in curves])
            epochs = np.arange(1, n + 1)
            ax.plot(epochs, values.mean(0), color=f"C{i}", label=f"{variant} ({len(curves)})", lw=1)
            ax.fill_between(epochs, values.min(0), values.max(0), color=f"C{i}", alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation force MAE (meV/A)")
        ax.set_title(dataset, fontsize=9)
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the report -------------------------------------------------------------------------------------------------
def _width_lines(summaries: Sequence[dict]) -> list[str]:
    seen, lines = set(), []
    for s in summaries:
        key = (s["dataset"], s["variant"])
        if key in seen or not s.get("width"):
            continue
        seen.add(key)
        w = s["width"]
        lines.append(f"| {s['dataset']} | {s['variant']} | {w['factor']:.3f} | {w['widths']} | {w['active']} | "
                     f"{w['dense']} | {100 * (w['active'] - w['dense']) / w['dense']:+.2f} % | {w['total']} |")
    return ["| dataset | variant | width factor | expert hidden widths per MoE layer | active | dense | "
            "difference | total |", "|---|---|---|---|---|---|---|---|", *lines] if lines else []


def _split_lines(summaries: Sequence[dict]) -> list[str]:
    out = []
    for dataset in dict.fromkeys(s["dataset"] for s in summaries):
        first = next(s for s in summaries if s["dataset"] == dataset)
        units = {s.get("split_unit", "not recorded") for s in summaries if s["dataset"] == dataset}
        unit = units.pop() if len(units) == 1 else "differs between runs"
        what = {"group": "every structure group (lattice, compound prototype, facet) in one split: held-out frames "
                         "are structures the training never saw",
                "structure": "every frame split on its own: held-out frames are other perturbations of lattices "
                             "and compounds the training saw"}.get(unit, unit)
        out.append(f"- `{dataset}` ({first['labels']}): {first['n_train']} training, {first['n_validation']} "
                   f"validation and **{first['n_test']} test frames** (the dataset's `test` split; errors are on it); "
                   f"split by {unit} ({what}).")
    return out


def _stability_lines(summaries: Sequence[dict]) -> list[str]:
    st = summaries[0]["stability"]
    return [f"Stability (pipeline.train.stability): `loss_spikes` = epochs whose mean training loss exceeds "
            f"{st['spike_factor']:g}x the lowest of the earlier epochs' (`max_loss_jump` = the largest such ratio); "
            f"`nonfinite_grads` "
            f"= optimiser steps with a non-finite gradient; `path_jump_mev` = the largest |E(x_(i+1)) - E(x_i) + "
            f"(F_i + F_(i+1)).(x_(i+1) - x_i)/2| along straight MD-like paths of {st['path_frames']} test frames "
            f"({st['path_steps']} steps to a Gaussian displacement of {st['path_amplitude_a']:g} A per component, "
            f"float64): below 1e-4 meV for continuous forces (measured), the size of the energy jump at a routing "
            f"switch. "
            f"**`unstable` = 1** when training stopped on a non-finite loss or diverged, any gradient was "
            f"non-finite, there were more than {st['max_loss_spikes']} loss spikes, or `path_jump_mev` > "
            f"{st['max_path_jump_mev']:g} meV; on the mean row it is the fraction of unstable seeds."]


def _convergence_lines(table: pd.DataFrame, curves: str | Path | None) -> list[str]:
    runs = per_seed_rows(table)
    out = []
    for column, what in (("late_change_force_pct", "force"), ("late_change_energy_pct", "energy")):
        values = runs[column].astype(float)
        if not values.notna().any():
            continue
        worst = runs.loc[values.idxmin()]
        out.append(f"{what} from {values.max():+.1f} to {values.min():+.1f} % (largest gain: {worst['dataset']}/"
                   f"{worst['variant']} seed {worst['seed']})")
    if not out:
        return []
    return ["Convergence (pipeline.train.convergence.late_change): `late_change_*_pct` = change of the best-so-far "
            "validation energy or force MAE over the last quarter of the epochs (percent; 0: the last quarter found "
            "no better weights; clearly negative: still improving when the budget ended). Over the runs: "
            f"{'; '.join(out)}." + (f" Learning curves: `{Path(curves).name}`." if curves is not None else "")]


def write_report(summaries: Sequence[dict], *, csv: str | Path, md: str | Path, heatmap: str | Path, pca: str | Path,
                 routing_csv: str | Path | None = None, routing_md: str | Path | None = None,
                 curves: str | Path | None = None, routing_cfg: MoEStudyRoutingConfig = MoEStudyRoutingConfig()
                 ) -> pd.DataFrame:
    """Write the study table (CSV; Markdown with the claims, notes and the routing analysis), the heat map and
    the PCA figure, and when given the routing table (CSV, Markdown) and the learning curves (PNG)."""
    table = study_table(summaries)
    for path in (csv, md, heatmap, pca, routing_csv, routing_md, curves):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv, index=False, float_format="%.6g")
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries))
    routing = routing_table(summaries, routing_cfg)
    plot_heatmap(summaries, datasets, heatmap)
    pca_dataset = next((d for d in _PCA_DATASETS if d in datasets and reference_summary(summaries, d)), datasets[0])
    ref = reference_summary(summaries, pca_dataset)
    stats = plot_pca(ref, pca, routing)
    if curves is not None:
        plot_curves(summaries, curves)
    if routing_csv is not None:
        routing.to_csv(routing_csv, index=False, float_format="%.6g")
    routing_text = (routing.round({"score": 3, "chance": 3, "p_value": 4}).to_markdown(index=False) if len(routing)
                    else f"no MoE variant with routing data on a dataset of >= {MIN_ROUTING_ELEMENTS} elements")
    if routing_md is not None:
        Path(routing_md).write_text(f"# MoE study: routing analysis\n\n{routing_text}\n")
    verdicts = claims(table, routing, alpha=routing_cfg.alpha)
    shown = table.round({"energy_mae_mev_atom": 2, "force_mae_mev_a": 1, "unstable": 2, "path_jump_mev": 4,
                         "loss_spikes": 1, "nonfinite_grads": 1, "late_change_energy_pct": 1,
                         "late_change_force_pct": 1, "train_wall_s": 0})
    n_seeds = table[table["seed"].map(lambda s: not isinstance(s, str))].groupby(["dataset", "variant"]).size()
    wall_h = float(sum(s["train_wall_s"] for s in summaries)) / 3600
    notes = [
        "# MoE routing study (arXiv 2603.07977)", "",
        "## Claims", "",
        "Computed from the table below (per-seed test errors; mean +- sample std over the seeds, n = seeds). "
        "Rule for 'A beats B': **supported** when mean_A + std_A < mean_B - std_B, **contradicted** when "
        f"mean_A - std_A > mean_B + std_B, and in each case only with {MIN_SEEDS} seeds or more on both sides and "
        "when it holds for every seed (A against B of the same seed number), else inconclusive. Instability: "
        "supported when at least half of the global-routing seeds are unstable and more than of element routing "
        f"({MIN_SEEDS} seeds or more of each). Periodic-table trends: the "
        f"permutation p-value of the {routing_cfg.knn}-NN family agreement below {routing_cfg.alpha:g} in every seed.",
        "", verdicts.to_markdown(index=False), "",
        "## Table", "",
        f"Seeds per variant: {', '.join(f'{d}/{v}: {n}' for (d, v), n in n_seeds.items())}. Total training time of "
        f"all runs: {wall_h:.2f} h (sum over runs of the epochs' wall time; 1 torch thread each).", "",
        *_split_lines(summaries), "",
        shown.to_markdown(index=False), "",
        "Labels: rows of `emt_alloys` are labelled by ASE's EMT, **not DFT**; rows of `periodic` by the SevenNet-0 "
        "teacher, **not DFT**; `pt_co` rows by GPAW PBE (DFT).", "",
        "Active parameters (pipeline.models.moe.parameter_counts): everything outside the MoE layers, the routers, "
        "the shared experts and top_k of the routed experts of each MoE layer; total: all parameters. The experts' "
        "hidden width of every MoE variant is solved to make its active count closest to the dense model's "
        "(pipeline.train.moe_study.equal_active_width; widths are integers, so the counts differ slightly):", "",
        *_width_lines(summaries), "",
        *_stability_lines(summaries), "",
        *_convergence_lines(table, curves), "",
        "Routing `global` is one learned top-k choice per structure from the mean of its atoms' current features: "
        "non-local and discontinuous, a study-only variant. Routing `configuration` is by the structure's "
        "composition, smooth along any path at fixed composition.", "",
        "## Routing analysis", "",
        f"Reference variant per dataset: element routing with shared experts (else the first MoE variant); routing "
        f"vectors = the element routers' probabilities of every MoE layer concatenated (else the test-set share of "
        f"top-k slots). Score = mean share of each element's {routing_cfg.knn} nearest elements (Euclidean, full "
        f"routing space) with the same label, over elements whose label another element shares; p = permutation "
        f"test against {routing_cfg.permutations} seeded shuffles of the element labels; chance = mean shuffled "
        f"score. Labels: periodic-table family (pipeline.data.periodic_set.ELEMENT_FAMILIES), group, period. "
        f"Datasets with fewer than {MIN_ROUTING_ELEMENTS} elements are left out.", "",
        routing_text, "",
        f"PCA figure ({pca_dataset}, {ref['variant'] + ' seed ' + str(ref['seed']) if ref else 'no MoE variant'}): "
        f"the first two components explain {stats['explained']:.0%} of the variance; nearest-neighbour family "
        f"purity {stats['nn_purity']:.2f}, mean within-family / between-family distance "
        f"{stats['within_between_ratio']:.2f}.",
    ]
    Path(md).write_text("\n".join(notes) + "\n")
    return table
