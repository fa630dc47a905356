# Configuration loading and validation, and helpers shared by the rules.

import json
import shlex

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

    Rules receive it as a param, so a change to a section reruns only the stages that read it.
    """
    full = CFG.to_dict()
    keep = {k: v for k, v in full.items() if not isinstance(v, dict)}
    keep.update({name: full[name] for name in sections})
    return json.dumps(keep, sort_keys=True)


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


def get_final_outputs():
    """Everything the default target builds."""
    return [
        rules.ingest.output.dataset,
        rules.ingest.output.stats_md,
        rules.cotraining_table.output.md,
        rules.md_system.output.png,
        *expand(rules.md.output.summary, run=MD_RUNS),
        *expand(rules.md.output.thermo, run=MD_RUNS),
        *(
            getattr(rules, name).output[key]
            for name in ("accuracy", "conservation", "eos", "interface", "speed")
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
