# The generalisation set (issue 16, section 3; pipeline.data.generalisation) and the data learning curve.
# Neither target is part of the default run.
#
# Target `generalisation` (DFT, about an hour on one core at the shipped label: settings):
# generalisation_sample -> generalisation_label (one job per chunk; every structure cached under
# results/generalisation/label/cache as soon as it is done, so a killed job resumes) -> generalisation_merge
# -> generalisation_ship, which writes generalisation.dest/generalisation.extxyz and its README. Those two
# files are deliberately NOT declared outputs (the rule declares the frame list under results/): the
# accuracy rule reads the shipped file as a source, so the default run never schedules DFT, even after a
# change of label: settings. Ship again with `snakemake --cores 1 generalisation --forcerun generalisation_ship`.
#
# Target `data_learning_curve` (HF trainings on 25 and 50 % of the frames, plus train_hf's own when the
# default run has not made it; ~15 CPU-minutes for all three at the default config): the HF expert of
# seed `seed` trained on generalisation.learning_curve.fractions of the training frames (nested,
# group-complete subsets; validation and test splits unchanged; fraction 1 is train_hf's own checkpoint),
# evaluated on the test split and on the shipped generalisation set.



rule generalisation_sample:
    output:
        chunks=expand(
            "results/generalisation/sample/chunk_{chunk}.extxyz",
            chunk=range(CFG.generalisation.n_chunks),
        ),
    params:
        config=stage_config("sample", "label", "generalisation"),
    log:
        "results/logs/generalisation/sample.log",
    benchmark:
        "results/benchmarks/generalisation/sample.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline sample-generalisation --config-json {params.config:q} "
        "--chunks {output.chunks} > {log} 2>&1"


rule generalisation_label:
    input:
        structures="results/generalisation/sample/chunk_{chunk}.extxyz",
    output:
        labelled="results/generalisation/label/chunks/labelled_{chunk}.extxyz",
        failures="results/generalisation/label/chunks/failures_{chunk}.csv",
    params:
        config=stage_config("label"),
        cache_dir="results/generalisation/label/cache",
        calc_log_dir="results/generalisation/label/calc_logs/chunk_{chunk}",
    log:
        "results/logs/generalisation/label_{chunk}.log",
    benchmark:
        "results/benchmarks/generalisation/label_{chunk}.tsv"
    threads: 1
    wildcard_constraints:
        chunk=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 "
        "python -m pipeline label --config-json {params.config:q} --structures {input.structures} "
        "--output {output.labelled} --failures {output.failures} --cache-dir {params.cache_dir} "
        "--log-dir {params.calc_log_dir} --no-progress > {log} 2>&1"


rule generalisation_merge:
    input:
        labelled=expand(
            rules.generalisation_label.output.labelled,
            chunk=range(CFG.generalisation.n_chunks),
        ),
        failures=expand(
            rules.generalisation_label.output.failures,
            chunk=range(CFG.generalisation.n_chunks),
        ),
    output:
        labelled="results/generalisation/labelled.extxyz",
        failures="results/generalisation/failures.csv",
    log:
        "results/logs/generalisation/merge.log",
    benchmark:
        "results/benchmarks/generalisation/merge.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline merge-labels --labelled {input.labelled} --failures-in {input.failures} "
        "--output {output.labelled} --failures {output.failures} > {log} 2>&1"


rule generalisation_ship:
    input:
        labelled=rules.generalisation_merge.output.labelled,
        failures=rules.generalisation_merge.output.failures,
        structures=rules.generalisation_sample.output.chunks,
        **generalisation_reference_input(),
    output:
        frames="results/generalisation/shipped_frames.csv",
    params:
        config=stage_config("label", "generalisation"),
        reference_arg=lambda wildcards, input: (
            f"--reference {input.reference}" if "reference" in input.keys() else ""
        ),
    log:
        "results/logs/generalisation/ship.log",
    benchmark:
        "results/benchmarks/generalisation/ship.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline ship-generalisation --config-json {params.config:q} --labelled {input.labelled} "
        "--failures {input.failures} --structures {input.structures} {params.reference_arg} "
        "--receipt {output.frames} > {log} 2>&1"


rule generalisation:
    input:
        rules.generalisation_ship.output.frames,


rule train_hf_fraction:
    input:
        dataset=rules.ingest.output.dataset,
    output:
        hf="results/learning_curve/seed{seed}/frac{fraction}/hf.pt",
        metrics="results/learning_curve/seed{seed}/frac{fraction}/hf_metrics.csv",
    params:
        config=TRAIN_CONFIG,
        subset_seed=CFG.generalisation.learning_curve.subset_seed,
        state_dir="results/learning_curve/seed{seed}/frac{fraction}/hf_state",
    log:
        "results/logs/learning_curve/seed{seed}/hf_frac{fraction}.log",
    benchmark:
        "results/benchmarks/learning_curve/seed{seed}/hf_frac{fraction}.tsv"
    threads: 1
    wildcard_constraints:
        seed=r"\d+",
        fraction=r"0\.\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline train --config-json {params.config:q} --stage hf "
        "--seed {wildcards.seed} --train-fraction {wildcards.fraction} --subset-seed {params.subset_seed} "
        "--dataset {input.dataset} --hf {output.hf} --metrics {output.metrics} "
        "--state-dir {params.state_dir} --no-progress > {log} 2>&1"


rule data_learning_curve:
    input:
        unpack(generalisation_input),
        dataset=rules.ingest.output.dataset,
        hf=learning_curve_checkpoints(),
    output:
        csv="results/tables/data_learning_curve.csv",
        md="results/tables/data_learning_curve.md",
        png="results/figures/data_learning_curve.png",
    params:
        config=stage_config("analysis", "ingest", "regions", "generalisation"),
        fractions=LEARNING_CURVE_FRACTIONS,
        generalisation_arg=lambda wildcards, input: (
            f"--generalisation {input.generalisation}" if "generalisation" in input.keys() else ""
        ),
    log:
        "results/logs/analysis/data_learning_curve.log",
    benchmark:
        "results/benchmarks/analysis/data_learning_curve.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline data-learning-curve --config-json {params.config:q} "
        "--dataset {input.dataset} --fractions {params.fractions} --hf {input.hf} {params.generalisation_arg} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"
