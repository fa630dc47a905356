# Stage "label": unlabelled structures -> energies, forces (and bulk stress) with GPAW (DFT) or EMT
# (not DFT), one job per chunk. Every structure's result is cached under results/label/cache as soon
# as it is computed (not a declared output, so a failed or killed job keeps it): rerunning the rule
# continues where it stopped. Per-structure GPAW text output goes to results/label/calc_logs/.


rule label:
    input:
        structures="results/sample/chunk_{chunk}.extxyz",
    output:
        labelled="results/label/chunks/labelled_{chunk}.extxyz",
        failures="results/label/chunks/failures_{chunk}.csv",
    params:
        config=stage_config("sample", "label"),
        cache_dir="results/label/cache",
        calc_log_dir="results/label/calc_logs/chunk_{chunk}",
    log:
        "results/logs/label/chunk_{chunk}.log",
    benchmark:
        "results/benchmarks/label/chunk_{chunk}.tsv"
    threads: 1
    wildcard_constraints:
        chunk=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 "
        "python -m pipeline label --config-json {params.config:q} --structures {input.structures} "
        "--output {output.labelled} --failures {output.failures} --cache-dir {params.cache_dir} "
        "--log-dir {params.calc_log_dir} > {log} 2>&1"


rule label_merge:
    input:
        labelled=expand("results/label/chunks/labelled_{chunk}.extxyz", chunk=range(CFG.label.n_chunks)),
        failures=expand("results/label/chunks/failures_{chunk}.csv", chunk=range(CFG.label.n_chunks)),
    output:
        labelled="results/label/labelled.extxyz",
        failures="results/label/failures.csv",
    log:
        "results/logs/label/merge.log",
    benchmark:
        "results/benchmarks/label_merge/label_merge.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline merge-labels --labelled {input.labelled} --failures-in {input.failures} "
        "--output {output.labelled} --failures {output.failures} > {log} 2>&1"


rule dft_sanity:
    input:
        labelled="results/label/labelled.extxyz",
        failures="results/label/failures.csv",
    output:
        csv="results/tables/dft_sanity.csv",
        md="results/tables/dft_sanity.md",
    log:
        "results/logs/dft_sanity.log",
    benchmark:
        "results/benchmarks/dft_sanity/dft_sanity.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline dft-sanity --labelled {input.labelled} --failures {input.failures} "
        "--csv {output.csv} --md {output.md} > {log} 2>&1"
