# Configuration loading and validation, and helpers shared by the rules.

import json
import shlex
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import min_version, validate

from pipeline.config import ConfigError, config_from_dict

min_version("9.0")


validate(config, schema="../schemas/config.schema.yaml", set_default=True)
try:
    CFG = config_from_dict(config, check_files=True)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


def stage_config(*sections):
    """JSON of the top-level scalars plus the named config sections, passed to one CLI call.

    A section may be dotted (``md.partition``): only that part of it is passed (the rest takes its
    defaults in the CLI). Rules receive it as a param, so a change to a section reruns only the stages
    that read it.
    """
    full = CFG.to_dict()
    keep = {k: v for k, v in full.items() if not isinstance(v, dict)}
    for name in sections:
        head, _, rest = name.partition(".")
        if rest:
            keep.setdefault(head, {})[rest] = full[head][rest]
        else:
            keep[head] = full[head]
    return json.dumps(keep, sort_keys=True)


# --- trained experts (workflow/rules/train.smk) ---

# The pairs (pipeline.train.PAIRS; not imported here to keep torch out of DAG building).
TRAIN_PAIRS = ["cotrained", "independent"]
SYMMETRIC = CFG.train.agreement_mode == "symmetric"


def expert_checkpoint(expert, pair, seed=CFG.seed):
    """Path of the checkpoint of ``expert`` (hf/lf) of ``pair`` for a training seed."""
    if expert == "hf" and not (SYMMETRIC and pair == "cotrained"):
        return f"results/models/seed{seed}/hf.pt"
    return f"results/models/seed{seed}/{pair}/{expert}.pt"


def pair_checkpoints(pair, seed=CFG.seed):
    """``{"hf": path, "lf": path}`` of one pair."""
    return {expert: expert_checkpoint(expert, pair, seed) for expert in ("hf", "lf")}


def training_metrics(seed=CFG.seed):
    """``{stage label: metrics CSV}`` of every training stage of one seed."""
    out = {"hf": f"results/models/seed{seed}/hf_metrics.csv"}
    for pair in TRAIN_PAIRS:
        joint = SYMMETRIC and pair == "cotrained"
        out[f"{'pair' if joint else 'lf'}_{pair}"] = f"results/models/seed{seed}/{pair}/metrics.csv"
    return out


def ingest_inputs(wildcards):
    """DFT files to ingest: data.paths (globs expanded by the CLI), or the label stage's output."""
    if CFG.data.source == "sample":
        return [rules.label_merge.output.labelled]
    return [p for p in CFG.data.paths if not any(c in p for c in "*?[")]


def ingest_input_args(wildcards):
    """The --inputs of the ingest CLI call, shell-quoted."""
    if CFG.data.source == "sample":
        return shlex.quote(rules.label_merge.output.labelled)
    return " ".join(shlex.quote(p) for p in CFG.data.paths)


def elastic_dft_input(wildcards):
    """{"dft": analysis.elastic.dft_set} for the elastic rule: a relative path is looked up in the working
    directory, then beside the Snakefile (the shipped set); null or not found: nothing (no DFT row)."""
    path = CFG.analysis.elastic.dft_set
    if not path:
        return {}
    for candidate in (Path(path), Path(workflow.basedir) / path):
        if candidate.exists():
            return {"dft": str(candidate)}
    logger.warning(f"analysis.elastic.dft_set {path} not found: the elastic table gets no DFT row")
    return {}


def get_final_outputs():
    """Everything the default target builds."""
    return [
        rules.ingest.output.dataset,
        rules.ingest.output.stats_md,
        rules.cotraining_table.output.md,
        *rules.learning_curves.output,
        *rules.robustness.output,
        rules.md_system.output.png,
        *expand(rules.md.output.summary, run=MD_RUNS),
        *expand(rules.md.output.thermo, run=MD_RUNS),
        *(
            getattr(rules, name).output[key]
            for name in ("accuracy", "conservation", "eos", "elastic", "interface", "speed")
            for key in ("csv", "md", "png")
        ),
        rules.summary.output.summary,
        *(moe_study_outputs() if CFG.moe_study.enabled else []),  # workflow/rules/moe_study.smk
    ]


# --- MoE routing study (workflow/rules/moe_study.smk) ---


def moe_emt_label_config():
    """The label stage's config with the EMT calculator (the study's multi-element set is not DFT)."""
    values = json.loads(stage_config("sample", "label", "moe_study"))
    values["label"]["calculator"] = "emt"
    return json.dumps(values, sort_keys=True)


def moe_study_dataset(wildcards):
    """Input dataset of one study run: the ingest stage's (pt_co) or the EMT set (emt_alloys)."""
    if wildcards.dataset == "pt_co":
        return rules.ingest.output.dataset
    return rules.moe_emt_dataset.output.dataset


def moe_study_outputs():
    """The study's table and figures (the moe_study target; added to rule all when moe_study.enabled)."""
    return list(rules.moe_study_report.output)
