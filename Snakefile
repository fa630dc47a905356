# Multi-fidelity mixture-of-experts MLIP pipeline (Pt(111)+CO).
# The configuration is validated against pipeline/config.schema.yaml (defaults filled) before any job runs.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/label.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/md.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/adaptive.smk"
include: "workflow/rules/moe_study.smk"
include: "workflow/rules/generalisation.smk"
include: "workflow/rules/active.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
