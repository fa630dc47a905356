# The element-wise MoE routing study (paper B; pipeline.train.moe_study): dense vs MoE (element /
# configuration / global routing, with and without shared experts, three shared/routed splits) vs MoLE, same
# data and budget, equal active parameters, moe_study.seeds seeds each, on the Pt+CO set of the ingest stage,
# on a multi-element set labelled by EMT (NOT DFT) and on the periodic-table set labelled by the SevenNet-0
# teacher (NOT DFT; moe_study.datasets picks). One job per (dataset, variant, seed), resumable: its training
# state (params.state, not an output) survives a killed job, and a rerun goes on from its last epoch; a
# finished state is reused as it is, and one from other settings is refused: delete the run's state/ folder to
# train it again. Not part of the default target unless
# moe_study.enabled; build it with
#   snakemake moe_study --cores 2 --configfile config/moe_study.yaml
#
# Periodic-table set (issue 20; pipeline.data.periodic_set): moe_periodic_sample -> moe_periodic_label (the
# teacher, `teacher` extra; every frame cached under results/moe_study/periodic/cache as soon as it is done, so
# a killed job resumes) -> moe_periodic_dataset (splits). The study reads the shipped set
# (moe_study.periodic.path) instead when it exists and moe_study.periodic.use_shipped: then nothing needs sevenn.
# Target moe_periodic_ship writes the shipped set and its README (not declared outputs, as for the
# generalisation set; ship again with --forcerun moe_periodic_ship). Target moe_periodic_check relabels a
# seeded subset with GPAW PBE (about 5 CPU-hours at the defaults) and writes the teacher's error table; target
# moe_periodic_check_ship ships the GPAW labels done so far (moe_study.periodic.teacher_check.path), which the
# label jobs then take instead of computing them, so the check can be finished over several runs.

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


rule moe_periodic_sample:
    output:
        structures=f"{MOE_STUDY_DIR}/periodic/structures.extxyz",
    params:
        config=stage_config("moe_study"),
    log:
        "results/logs/moe_study/periodic_sample.log",
    benchmark:
        "results/benchmarks/moe_periodic_sample/moe_periodic_sample.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-periodic-sample --config-json {params.config:q} --output {output.structures} "
        "> {log} 2>&1"


rule moe_periodic_label:
    input:
        structures=rules.moe_periodic_sample.output.structures,
    output:
        labelled=f"{MOE_STUDY_DIR}/periodic/labelled.extxyz",
        failures=f"{MOE_STUDY_DIR}/periodic/failures.csv",
    params:
        config=moe_periodic_label_config(),
        cache_dir=f"{MOE_STUDY_DIR}/periodic/cache",
        calc_log_dir=f"{MOE_STUDY_DIR}/periodic/calc_logs",
    log:
        "results/logs/moe_study/periodic_label.log",
    benchmark:
        "results/benchmarks/moe_periodic_label/moe_periodic_label.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS=1 python -m pipeline label --config-json {params.config:q} --structures {input.structures} "
        "--output {output.labelled} --failures {output.failures} --cache-dir {params.cache_dir} "
        "--log-dir {params.calc_log_dir} --no-progress > {log} 2>&1"


rule moe_periodic_dataset:
    input:
        labelled=moe_periodic_labelled(),
    output:
        dataset=f"{MOE_STUDY_DIR}/periodic/dataset.extxyz",
    params:
        config=moe_periodic_dataset_config(),
    log:
        "results/logs/moe_study/periodic_dataset.log",
    benchmark:
        "results/benchmarks/moe_periodic_dataset/moe_periodic_dataset.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-periodic-dataset --config-json {params.config:q} --labelled {input.labelled} "
        "--dataset {output.dataset} > {log} 2>&1"


rule moe_periodic_ship:
    input:
        labelled=rules.moe_periodic_label.output.labelled,
    output:
        receipt=f"{MOE_STUDY_DIR}/periodic/shipped_families.csv",
    params:
        config=stage_config("moe_study"),
    log:
        "results/logs/moe_study/periodic_ship.log",
    benchmark:
        "results/benchmarks/moe_periodic_ship/moe_periodic_ship.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-periodic-ship --config-json {params.config:q} --labelled {input.labelled} "
        "--receipt {output.receipt} > {log} 2>&1"


rule moe_periodic_check_sample:
    input:
        labelled=moe_periodic_labelled(),
    output:
        subset=f"{MOE_STUDY_DIR}/periodic/check/teacher.extxyz",
        chunks=expand(
            f"{MOE_STUDY_DIR}/periodic/check/chunk_{{chunk}}.extxyz",
            chunk=range(CFG.moe_study.periodic.teacher_check.n_chunks),
        ),
    params:
        config=stage_config("moe_study"),
    log:
        "results/logs/moe_study/periodic_check_sample.log",
    benchmark:
        "results/benchmarks/moe_periodic_check_sample/moe_periodic_check_sample.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-periodic-check-sample --config-json {params.config:q} --labelled {input.labelled} "
        "--subset {output.subset} --chunks {output.chunks} > {log} 2>&1"


rule moe_periodic_check_label:
    input:
        structures=f"{MOE_STUDY_DIR}/periodic/check/chunk_{{chunk}}.extxyz",
    output:
        labelled=f"{MOE_STUDY_DIR}/periodic/check/labelled_{{chunk}}.extxyz",
        failures=f"{MOE_STUDY_DIR}/periodic/check/failures_{{chunk}}.csv",
    params:
        config=moe_periodic_check_label_config(),
        cache_dir=f"{MOE_STUDY_DIR}/periodic/check/cache",
        reuse=moe_periodic_check_reuse(),
        calc_log_dir=f"{MOE_STUDY_DIR}/periodic/check/calc_logs/chunk_{{chunk}}",
    log:
        "results/logs/moe_study/periodic_check_label_{chunk}.log",
    benchmark:
        "results/benchmarks/moe_periodic_check_label/chunk_{chunk}.tsv"
    threads: 1
    wildcard_constraints:
        chunk=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 "
        "python -m pipeline label --config-json {params.config:q} --structures {input.structures} "
        "--output {output.labelled} --failures {output.failures} --cache-dir {params.cache_dir} "
        "--log-dir {params.calc_log_dir} --no-progress {params.reuse} > {log} 2>&1"


# The GPAW labels done so far (read from the cache, so also of a stopped check) -> resources/ with a README; the
# label jobs above take them back (--reuse). Not a declared output, like moe_periodic_ship: ship again with
#   snakemake moe_periodic_check_ship --forcerun moe_periodic_check_ship --cores 1 --configfile config/moe_study.yaml
rule moe_periodic_check_ship:
    input:
        chunks=rules.moe_periodic_check_sample.output.chunks,
    output:
        receipt=f"{MOE_STUDY_DIR}/periodic/check/shipped_families.csv",
    params:
        config=stage_config("label", "moe_study"),
        cache_dir=rules.moe_periodic_check_label.params.cache_dir,
    log:
        "results/logs/moe_study/periodic_check_ship.log",
    benchmark:
        "results/benchmarks/moe_periodic_check_ship/moe_periodic_check_ship.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-periodic-check-ship --config-json {params.config:q} --chunks {input.chunks} "
        "--cache-dir {params.cache_dir} --receipt {output.receipt} > {log} 2>&1"


rule moe_periodic_check_merge:
    input:
        labelled=expand(
            rules.moe_periodic_check_label.output.labelled,
            chunk=range(CFG.moe_study.periodic.teacher_check.n_chunks),
        ),
        failures=expand(
            rules.moe_periodic_check_label.output.failures,
            chunk=range(CFG.moe_study.periodic.teacher_check.n_chunks),
        ),
    output:
        labelled=f"{MOE_STUDY_DIR}/periodic/check/gpaw.extxyz",
        failures=f"{MOE_STUDY_DIR}/periodic/check/gpaw_failures.csv",
    log:
        "results/logs/moe_study/periodic_check_merge.log",
    benchmark:
        "results/benchmarks/moe_periodic_check_merge/moe_periodic_check_merge.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline merge-labels --labelled {input.labelled} --failures-in {input.failures} "
        "--output {output.labelled} --failures {output.failures} > {log} 2>&1"


rule moe_periodic_check:
    input:
        teacher=rules.moe_periodic_check_sample.output.subset,
        dft=rules.moe_periodic_check_merge.output.labelled,
        failures=rules.moe_periodic_check_merge.output.failures,
    output:
        csv="results/tables/moe_periodic_teacher_check.csv",
        md="results/tables/moe_periodic_teacher_check.md",
    params:
        config=stage_config("label", "moe_study"),
    log:
        "results/logs/moe_study/periodic_check.log",
    benchmark:
        "results/benchmarks/moe_periodic_check/moe_periodic_check.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-periodic-check-table --config-json {params.config:q} --teacher {input.teacher} "
        "--dft {input.dft} --failures {input.failures} --csv {output.csv} --md {output.md} > {log} 2>&1"


rule moe_study_train:
    input:
        dataset=moe_study_dataset,
    output:
        checkpoint=f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/seed{{seed}}/model.pt",
        metrics=f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/seed{{seed}}/metrics.csv",
        summary=f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/seed{{seed}}/summary.json",
    params:
        config=moe_study_train_config(),
        # not an output: it survives a killed job, and the next run resumes from it
        state=f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/seed{{seed}}/state/training_state.pt",
    log:
        "results/logs/moe_study/train/{dataset}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/moe_study_train/{dataset}/{variant}/seed{seed}.tsv"
    threads: 1
    wildcard_constraints:
        dataset="pt_co|emt_alloys|periodic",
        variant=r"[a-z_0-9]+",
        seed=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline moe-study-train --config-json {params.config:q} "
        "--dataset {input.dataset} --dataset-name {wildcards.dataset} --variant {wildcards.variant} "
        "--seed {wildcards.seed} --state {params.state} "
        "--checkpoint {output.checkpoint} --metrics {output.metrics} --summary {output.summary} > {log} 2>&1"


rule moe_study_report:
    input:
        summaries=expand(
            f"{MOE_STUDY_DIR}/{{dataset}}/{{variant}}/seed{{seed}}/summary.json",
            dataset=CFG.moe_study.datasets,
            variant=CFG.moe_study.variants,
            seed=CFG.moe_study.seeds,
        ),
    output:
        csv="results/tables/moe_study.csv",
        md="results/tables/moe_study.md",
        routing_csv="results/tables/moe_study_routing.csv",
        routing_md="results/tables/moe_study_routing.md",
        heatmap="results/figures/moe_study_expert_usage.png",
        pca="results/figures/moe_study_routing_pca.png",
        curves="results/figures/moe_study_learning_curves.png",
    params:
        config=stage_config("moe_study"),
    log:
        "results/logs/moe_study/report.log",
    benchmark:
        "results/benchmarks/moe_study_report/moe_study_report.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline moe-study-report --config-json {params.config:q} --summaries {input.summaries} "
        "--csv {output.csv} --md {output.md} --routing-csv {output.routing_csv} --routing-md {output.routing_md} "
        "--heatmap {output.heatmap} --pca {output.pca} --curves {output.curves} > {log} 2>&1"


rule moe_study:
    input:
        rules.moe_study_report.output,


# MoE layers in the HF expert (issue 20; pipeline.analysis.moe_hf): the models.hf preset dense and as each
# moe_study.hf_expert.variants entry at equal active parameters, on the Pt+CO set, every moe_study.seeds seed,
# resumable like the study's runs; then the accuracy (test split) and the cost of an MD step per atom:
#   snakemake moe_hf --cores 2 --configfile config/moe_study.yaml
MOE_HF_DIR = f"{MOE_STUDY_DIR}/hf_expert"


rule moe_hf_train:
    input:
        dataset=rules.ingest.output.dataset,
    output:
        checkpoint=f"{MOE_HF_DIR}/{{variant}}/seed{{seed}}/model.pt",
        metrics=f"{MOE_HF_DIR}/{{variant}}/seed{{seed}}/metrics.csv",
        summary=f"{MOE_HF_DIR}/{{variant}}/seed{{seed}}/summary.json",
    params:
        config=moe_study_train_config(),
        # not an output: it survives a killed job, and the next run resumes from it
        state=f"{MOE_HF_DIR}/{{variant}}/seed{{seed}}/state/training_state.pt",
    log:
        "results/logs/moe_study/hf_expert/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/moe_hf_train/{variant}/seed{seed}.tsv"
    threads: 1
    wildcard_constraints:
        variant=r"[a-z_0-9]+",
        seed=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline moe-study-train --config-json {params.config:q} "
        "--dataset {input.dataset} --dataset-name pt_co --base-model hf --variant {wildcards.variant} "
        "--seed {wildcards.seed} --state {params.state} "
        "--checkpoint {output.checkpoint} --metrics {output.metrics} --summary {output.summary} > {log} 2>&1"


rule moe_hf_report:
    input:
        summaries=expand(f"{MOE_HF_DIR}/{{variant}}/seed{{seed}}/summary.json",
                         variant=CFG.moe_study.hf_expert.variants, seed=CFG.moe_study.seeds),
        checkpoints=expand(f"{MOE_HF_DIR}/{{variant}}/seed{{seed}}/model.pt",
                           variant=CFG.moe_study.hf_expert.variants, seed=CFG.moe_study.seeds),
    output:
        csv="results/tables/moe_hf.csv",
        md="results/tables/moe_hf.md",
        png="results/figures/moe_hf.png",
    params:
        config=stage_config("moe_study", "analysis", "md", "regions"),
    log:
        "results/logs/moe_study/hf_report.log",
    benchmark:
        "results/benchmarks/moe_hf_report/moe_hf_report.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline moe-hf-report --config-json {params.config:q} "
        "--summaries {input.summaries} --checkpoints {input.checkpoints} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule moe_hf:
    input:
        rules.moe_hf_report.output,
