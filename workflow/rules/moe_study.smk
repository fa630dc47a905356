# The element-wise MoE routing study (paper B; pipeline.train.moe_study): dense vs MoE (element /
# configuration routing, with and without shared experts) vs MoLE, same data and budget, on the Pt+CO
# set of the ingest stage and on a multi-element set labelled by EMT (NOT DFT). Not part of the default
# target unless moe_study.enabled; build it with
#   snakemake moe_study --cores 2 --configfile config/moe_study.yaml

MOE_STUDY_DIR = "results/moe_study"


rule moe_emt_sample:
    output:
        structures=f"{MOE_STUDY_DIR}/emt/structures.extxyz",
    params:
        config=stage_config("moe_study"),
    log:
        "results/logs/moe_study/emt_sample.log",
    benchmark:
        "results/benchmarks/moe_emt_sample/moe_emt_sample.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-emt-sample --config-json {params.config:q} --output {output.structures} > {log} 2>&1"


rule moe_emt_label:
    input:
        structures=rules.moe_emt_sample.output.structures,
    output:
        labelled=f"{MOE_STUDY_DIR}/emt/labelled.extxyz",
        failures=f"{MOE_STUDY_DIR}/emt/failures.csv",
    params:
        config=moe_emt_label_config(),
        cache_dir=f"{MOE_STUDY_DIR}/emt/cache",
        calc_log_dir=f"{MOE_STUDY_DIR}/emt/calc_logs",
    log:
        "results/logs/moe_study/emt_label.log",
    benchmark:
        "results/benchmarks/moe_emt_label/moe_emt_label.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline label --config-json {params.config:q} --structures {input.structures} "
        "--output {output.labelled} --failures {output.failures} --cache-dir {params.cache_dir} "
        "--log-dir {params.calc_log_dir} --no-progress > {log} 2>&1"


rule moe_emt_dataset:
    input:
        labelled=rules.moe_emt_label.output.labelled,
    output:
        dataset=f"{MOE_STUDY_DIR}/emt/dataset.extxyz",
    params:
        config=stage_config("moe_study"),
    log:
        "results/logs/moe_study/emt_dataset.log",
    benchmark:
        "results/benchmarks/moe_emt_dataset/moe_emt_dataset.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-emt-dataset --config-json {params.config:q} --labelled {input.labelled} "
        "--dataset {output.dataset} > {log} 2>&1"


rule moe_study_train:
    input:
        dataset=moe_study_dataset,
    output:
        checkpoint=f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/model.pt",
        metrics=f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/metrics.csv",
        summary=f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/summary.json",
    params:
        config=stage_config("models", "train", "moe_study"),
    log:
        "results/logs/moe_study/train/{dataset}/{variant}.log",
    benchmark:
        "results/benchmarks/moe_study_train/{dataset}/{variant}.tsv"
    threads: 1
    wildcard_constraints:
        dataset="pt_co|emt_alloys",
        variant=r"[a-z_]+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline moe-study-train --config-json {params.config:q} "
        "--dataset {input.dataset} --dataset-name {wildcards.dataset} --variant {wildcards.variant} "
        "--checkpoint {output.checkpoint} --metrics {output.metrics} --summary {output.summary} > {log} 2>&1"


rule moe_study_report:
    input:
        summaries=expand(
            f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/summary.json",
            dataset=CFG.moe_study.datasets,
            variant=CFG.moe_study.variants,
        ),
    output:
        csv="results/tables/moe_study.csv",
        md="results/tables/moe_study.md",
        heatmap="results/figures/moe_study_expert_usage.png",
        pca="results/figures/moe_study_routing_pca.png",
    log:
        "results/logs/moe_study/report.log",
    benchmark:
        "results/benchmarks/moe_study_report/moe_study_report.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-study-report --summaries {input.summaries} --csv {output.csv} --md {output.md} "
        "--heatmap {output.heatmap} --pca {output.pca} > {log} 2>&1"


rule moe_study:
    input:
        rules.moe_study_report.output,
