# Stage "train": dataset -> one HF/LF expert pair per {pair}: "cotrained" (agreement terms on bulk
# atoms) and "independent" (lambda = 0, same seed, data order and budget), then the co-training table.
#
# The training state (results/models/{pair}/state/, written atomically after every epoch) is NOT a
# declared output, so Snakemake never deletes it: a killed or failed job rerun with
# --rerun-incomplete resumes from the last completed epoch (the partial metrics.csv is rewritten from
# the state). The state file is removed after a successful run, so a rerun caused by a changed
# dataset or config starts afresh; a leftover state from an interrupted run with a different config
# is an error that names the differing keys (delete the state directory to start over).
#
# GPU: the code picks the device itself (config key device: auto -> CUDA when present); on a cluster
# give the rule a GPU with e.g. `--set-resources train:gpu=1` (the slurm executor plugin maps it).
# No gpu resource is declared here, so CPU-only runs are not blocked by an absent counter.

# The pairs (pipeline.train.PAIRS; not imported here to keep torch out of DAG building).
TRAIN_PAIRS = ["cotrained", "independent"]


rule train:
    input:
        dataset=rules.ingest.output.dataset,
    output:
        hf="results/models/{pair}/hf.pt",
        lf="results/models/{pair}/lf.pt",
        metrics="results/models/{pair}/metrics.csv",
    params:
        config=stage_config("models", "regions", "train"),
        state_dir="results/models/{pair}/state",
    log:
        "results/logs/train/{pair}.log",
    benchmark:
        "results/benchmarks/train/{pair}.tsv"
    threads: 1
    wildcard_constraints:
        pair="cotrained|independent",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline train --config-json {params.config:q} --pair {wildcards.pair} "
        "--dataset {input.dataset} --hf {output.hf} --lf {output.lf} --metrics {output.metrics} "
        "--state-dir {params.state_dir} > {log} 2>&1"


rule cotraining_table:
    input:
        dataset=rules.ingest.output.dataset,
        hf=expand("results/models/{pair}/hf.pt", pair=TRAIN_PAIRS),
        lf=expand("results/models/{pair}/lf.pt", pair=TRAIN_PAIRS),
    output:
        csv="results/tables/cotraining.csv",
        md="results/tables/cotraining.md",
    params:
        config=stage_config(),
        pairs=TRAIN_PAIRS,
    log:
        "results/logs/cotraining_table.log",
    benchmark:
        "results/benchmarks/cotraining_table/cotraining_table.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline cotraining-table --config-json {params.config:q} --dataset {input.dataset} "
        "--pairs {params.pairs} --hf {input.hf} --lf {input.lf} --csv {output.csv} --md {output.md} > {log} 2>&1"
