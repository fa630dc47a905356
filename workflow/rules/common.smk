# Configuration loading and validation, and helpers shared by the rules.

import json
import re
import shlex
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import min_version

from pipeline import names
from pipeline.config import ConfigError, config_from_dict, validate_config_dict

min_version("9.0")


try:
    # the package's schema (pipeline/config.schema.yaml) validates and fills every default, as for the CLI
    config.update(validate_config_dict(config))
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

# The pairs and experts (pipeline.names: shared with the package, imports no torch), as lists for the rules.
TRAIN_PAIRS = list(names.TRAIN_PAIRS)
EXPERTS = list(names.EXPERTS)
SYMMETRIC = CFG.train.agreement_mode == "symmetric"


def expert_checkpoint(expert, pair, seed=CFG.seed):
    """Path of the checkpoint of ``expert`` (hf/lf) of ``pair`` for a training seed."""
    if expert == "hf" and not (SYMMETRIC and pair == "cotrained"):
        return f"results/models/seed{seed}/hf.pt"
    return f"results/models/seed{seed}/{pair}/{expert}.pt"


def pair_checkpoints(pair, seed=CFG.seed):
    """``{"hf": path, "lf": path}`` of one pair."""
    return {expert: expert_checkpoint(expert, pair, seed) for expert in EXPERTS}


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


def moe_periodic_label_config():
    """The label stage's config with the SevenNet-0 teacher (the periodic-table set is not DFT)."""
    values = json.loads(stage_config("label", "moe_study"))
    values["label"]["calculator"] = "sevenn"
    return json.dumps(values, sort_keys=True)


def moe_periodic_check_label_config():
    """The label stage's config with the GPAW settings of moe_study.periodic.teacher_check (one source of truth:
    pipeline.data.teacher_check.check_label_config)."""
    import dataclasses

    from pipeline.data.teacher_check import check_label_config

    values = json.loads(stage_config("label"))
    values["label"] = json.loads(json.dumps(dataclasses.asdict(check_label_config(CFG))))
    return json.dumps(values, sort_keys=True)


def moe_periodic_check_reuse():
    """``--reuse <shipped GPAW labels>`` of the teacher check's label jobs when the shipped file exists, else ''.
    A parameter, not an input: shipping more labels does not rerun finished label jobs."""
    shipped = _shipped_file(CFG.moe_study.periodic.teacher_check.path)
    return f"--reuse {shlex.quote(shipped)}" if shipped else ""


def moe_periodic_labelled():
    """The teacher-labelled periodic-table set: the shipped file (moe_study.periodic.path, a source: no sevenn
    needed) when it exists and use_shipped is true, else the output of the teacher labelling rule."""
    shipped = _shipped_file(CFG.moe_study.periodic.path) if CFG.moe_study.periodic.use_shipped else None
    return shipped or rules.moe_periodic_label.output.labelled


def moe_study_dataset(wildcards):
    """Input dataset of one study run: the ingest stage's (pt_co), the EMT set (emt_alloys) or the periodic-table
    set (periodic)."""
    if wildcards.dataset == "pt_co":
        return rules.ingest.output.dataset
    if wildcards.dataset == "periodic":
        return rules.moe_periodic_dataset.output.dataset
    return rules.moe_emt_dataset.output.dataset


def moe_study_train_config():
    """The config of one study run: the top-level scalars, models, train and moe_study without the keys that only
    choose runs or shape the report (enabled, datasets, variants, seeds, routing_analysis, hf_expert, and the
    teacher check's settings; the CLI fills their defaults), so adding a seed or a variant, or changing the check,
    reruns nothing that is done."""
    values = json.loads(stage_config("models", "train", "moe_study"))
    for key in ("enabled", "datasets", "variants", "seeds", "routing_analysis", "hf_expert"):
        values["moe_study"].pop(key)
    values["moe_study"]["periodic"].pop("teacher_check")  # the DFT check's settings do not shape a run
    return json.dumps(values, sort_keys=True)


def moe_periodic_dataset_config():
    """The config of the periodic set's dataset (splits): ``moe_study.periodic`` without the teacher check, so that
    choosing runs, changing the check or the study's training settings rebuilds no dataset (and reruns no run)."""
    periodic = json.loads(stage_config("moe_study"))["moe_study"]["periodic"]
    periodic.pop("teacher_check")
    return json.dumps({"moe_study": {"periodic": periodic}}, sort_keys=True)


def moe_study_outputs():
    """The study's table and figures (the moe_study target; added to rule all when moe_study.enabled)."""
    return list(rules.moe_study_report.output)


# --- active learning (workflow/rules/active.smk) ---

AL = CFG.active
AL_ITERATIONS = list(range(AL.iterations))
AL_SEED0 = AL.committee_seeds[0]
AL_CONFIG = stage_config("active", "sample", "regions", "md.partition", "md.neighbor_skin_a")
AL_REPORT_CONFIG = stage_config("active", "label")


def al_checkpoint(expert, it, seed=AL_SEED0, pair=AL.pair):
    """Path of an expert of iteration ``it`` (mirrors expert_checkpoint of common.smk)."""
    root = f"results/active/iter{it}/models/seed{seed}"
    if expert == "hf" and not (SYMMETRIC and pair == "cotrained"):
        return f"{root}/hf.pt"
    return f"{root}/{pair}/{expert}.pt"


def al_committee(wildcards):
    """The HF committee of an iteration: the HF expert trained alone for every committee seed."""
    return [f"results/active/iter{wildcards.iter}/models/seed{s}/hf.pt" for s in AL.committee_seeds]


def al_explore_models(wildcards):
    """{"hf": ..., "lf": ...} of the exploration (lf only when the mixture is explored)."""
    models = {"hf": al_checkpoint("hf", wildcards.iter)}
    if "mixture" in AL.explore.runs:
        models["lf"] = al_checkpoint("lf", wildcards.iter)
    return models


def al_labelled(it):
    """The merged labelled frames of iteration ``it`` when there are any (its merge is a checkpoint)."""
    path = checkpoints.al_label_merge.get(iter=it).output.labelled
    return [path] if Path(path).stat().st_size > 0 else []


def al_ingest_inputs(wildcards):
    """Base DFT files + the labelled frames of every earlier iteration."""
    added = [p for j in range(int(wildcards.iter)) for p in al_labelled(j)]
    return [*ingest_inputs(wildcards), *added]


def al_ingest_input_args(wildcards):
    """The --inputs of an iteration's ingest call (base + earlier labelled frames), shell-quoted."""
    added = [p for j in range(int(wildcards.iter)) for p in al_labelled(j)]
    return " ".join([ingest_input_args(wildcards), *(shlex.quote(p) for p in added)])


def al_label_chunks(kind):
    """Input function: the labelled chunk files (kind labelled) or failures (kind failures) of an iteration."""

    def inputs(wildcards):
        directory = checkpoints.al_select.get(iter=wildcards.iter).output.directory
        chunks = sorted(glob_wildcards(f"{directory}/chunk_{{chunk}}.extxyz").chunk)
        return expand(getattr(rules.al_label.output, kind), iter=wildcards.iter, chunk=chunks)

    return inputs


# --- generalisation set (workflow/rules/generalisation.smk) ---


def _shipped_file(path):
    """``path`` when it exists (relative: the working directory, then beside the Snakefile), else None."""
    if not path:
        return None
    for candidate in (Path(path), Path(workflow.basedir) / path):
        if candidate.exists():
            return str(candidate)
    return None


def generalisation_input(wildcards):
    """{"generalisation": generalisation.path} when the shipped set exists, else {} (the accuracy table then
    says that it is absent). A source file, never the output of a job, so that the default run labels nothing."""
    path = _shipped_file(CFG.generalisation.path)
    return {"generalisation": path} if path else {}


def fraction_label(fraction):
    """Wildcard text of a training fraction: 0.25 -> "0.25", 1.0 -> "1"."""
    return f"{float(fraction):g}"


LEARNING_CURVE_FRACTIONS = [fraction_label(f) for f in CFG.generalisation.learning_curve.fractions]


def learning_curve_checkpoints(seed=CFG.seed):
    """HF checkpoint of every learning-curve fraction, in the order of LEARNING_CURVE_FRACTIONS (fraction 1:
    train_hf's own checkpoint, see expert_checkpoint; the others: train_hf_fraction's)."""
    return [
        expert_checkpoint("hf", "independent", seed)
        if fraction == "1"
        else f"results/learning_curve/seed{seed}/frac{fraction}/hf.pt"
        for fraction in LEARNING_CURVE_FRACTIONS
    ]


def generalisation_reference_input():
    """{"reference": the shipped training set} (first of data.paths) when it exists: the ship step compares
    the generalisation set's DFT settings with it."""
    path = _shipped_file(CFG.data.paths[0]) if CFG.data.source == "files" and CFG.data.paths else None
    return {"reference": path} if path else {}
