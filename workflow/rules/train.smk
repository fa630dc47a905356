# Stage "train": dataset -> the experts of every pair, per training seed (pipeline.train.run).
#
# Pairs: "cotrained" (agreement terms of train:) and "independent" (every lambda 0). With
# train.agreement_mode anchored (default) training runs in two stages: train_hf trains the HF expert alone
# and selects it on its own validation loss; that one HF belongs to both pairs; train_lf then trains each
# pair's LF expert against it (frozen, its outputs cached). With agreement_mode symmetric the co-trained
# pair's two experts train together (train_pair, one joint selection); the independent pair is unchanged.
# Paths carry the seed ({seed}: initial weights, batch order, mixture cells; the split has its own seed),
# so the robustness target (analysis.smk) trains the same rules for several seeds.
#
# A stage's state (results/models/seed{seed}/.../state/, written atomically after every epoch) is NOT a
# declared output, so Snakemake never deletes it: a killed job rerun with --rerun-incomplete resumes from
# the last completed epoch. The state file is removed after a successful run; a leftover state of another
# configuration is an error that names the differing keys (delete the state directory to start over).
#
# GPU: the code picks the device itself (config key device: auto -> CUDA when present); on a cluster give
# the rules a GPU with e.g. `--set-resources train_hf:gpu=1` (the slurm executor plugin maps it).

TRAIN_CONFIG = stage_config("models", "regions", "train", "md.partition")


rule train_hf:
    input:
        dataset=rules.ingest.output.dataset,
    output:
        hf="results/models/seed{seed}/hf.pt",
        metrics="results/models/seed{seed}/hf_metrics.csv",
    params:
        config=TRAIN_CONFIG,
        state_dir="results/models/seed{seed}/hf_state",
    log:
        "results/logs/train/seed{seed}/hf.log",
    benchmark:
        "results/benchmarks/train/seed{seed}/hf.tsv"
    threads: 1
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline train --config-json {params.config:q} --stage hf "
        "--seed {wildcards.seed} --dataset {input.dataset} --hf {output.hf} --metrics {output.metrics} "
        "--state-dir {params.state_dir} --no-progress > {log} 2>&1"


rule train_lf:
    input:
        dataset=rules.ingest.output.dataset,
        anchor=rules.train_hf.output.hf,
    output:
        lf="results/models/seed{seed}/{pair}/lf.pt",
        metrics="results/models/seed{seed}/{pair}/metrics.csv",
    params:
        config=TRAIN_CONFIG,
        state_dir="results/models/seed{seed}/{pair}/state",
    log:
        "results/logs/train/seed{seed}/lf_{pair}.log",
    benchmark:
        "results/benchmarks/train/seed{seed}/lf_{pair}.tsv"
    threads: 1
    wildcard_constraints:
        seed=r"\d+",
        pair="independent" if SYMMETRIC else "cotrained|independent",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline train --config-json {params.config:q} --stage lf "
        "--pair {wildcards.pair} --seed {wildcards.seed} --dataset {input.dataset} --anchor {input.anchor} "
        "--lf {output.lf} --metrics {output.metrics} --state-dir {params.state_dir} --no-progress > {log} 2>&1"


if SYMMETRIC:

    rule train_pair:
        input:
            dataset=rules.ingest.output.dataset,
        output:
            hf="results/models/seed{seed}/{pair}/hf.pt",
            lf="results/models/seed{seed}/{pair}/lf.pt",
            metrics="results/models/seed{seed}/{pair}/metrics.csv",
        params:
            config=TRAIN_CONFIG,
            state_dir="results/models/seed{seed}/{pair}/state",
        log:
            "results/logs/train/seed{seed}/pair_{pair}.log",
        benchmark:
            "results/benchmarks/train/seed{seed}/pair_{pair}.tsv"
        threads: 1
        wildcard_constraints:
            seed=r"\d+",
            pair="cotrained",
        conda:
            "../../envs/pipeline.yaml"
        shell:
            "OMP_NUM_THREADS={threads} python -m pipeline train --config-json {params.config:q} --stage pair "
            "--pair {wildcards.pair} --seed {wildcards.seed} --dataset {input.dataset} --hf {output.hf} "
            "--lf {output.lf} --metrics {output.metrics} --state-dir {params.state_dir} --no-progress > {log} 2>&1"


rule cotraining_table:
    input:
        dataset=rules.ingest.output.dataset,
        hf=[expert_checkpoint("hf", pair) for pair in TRAIN_PAIRS],
        lf=[expert_checkpoint("lf", pair) for pair in TRAIN_PAIRS],
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
