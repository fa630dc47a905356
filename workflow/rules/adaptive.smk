# Issue 18, the analysis of the adaptive partition: for every training seed of analysis.adaptive.seeds
# (default: robustness.seeds), ASE NVE runs of the md.system cell (no fixed atoms) with the adaptive partition
# (md.partition.adaptive), the static partition (md.partition rule), the static partition without surface
# layers and full HF, the C atom of one CO dragged across the surface by a static lateral harmonic well that
# is part of the Hamiltonian; energy drift, momentum drift, HF centres per step, LF next to C, and the speedup
# over full HF of one step on a ~2000-atom slab with the speed table's CO coverage; in the switching shell of
# the adaptive run, the HF-LF energy disagreement and the switching force, co-trained vs independent LF
# (pipeline.analysis.adaptive); then the seeds stacked with mean/std rows and the verdicts.
# Target `adaptive`; NOT part of the default run (rule all). Needs common.smk and analysis.smk included
# first (expert_checkpoint, stage_config, SPEED_RESERVED_CORES). About 20 min per seed on 2 cores with the
# default experts (4 runs x 1800 steps of the 224-atom cell, then ~3 min of timing), after its training.
#
# The rule reserves SPEED_RESERVED_CORES cores (as the speed rule) so that no other job runs beside the
# timing; the runs themselves use torch_threads threads.

ADAPTIVE_PAIR = "cotrained"
ADAPTIVE_SEEDS = list(CFG.analysis.adaptive.seeds_or(CFG.robustness.seeds))


rule adaptive_seed:
    input:
        hf=lambda wc: expert_checkpoint("hf", ADAPTIVE_PAIR, wc.seed),
        lf=lambda wc: expert_checkpoint("lf", ADAPTIVE_PAIR, wc.seed),
        lf_independent=lambda wc: expert_checkpoint("lf", "independent", wc.seed),
    output:
        csv="results/tables/adaptive/seed{seed}.csv",
        md="results/tables/adaptive/seed{seed}.md",
        png=report("results/figures/adaptive/lambda_seed{seed}.png", category="6. Adaptive partition"),
    params:
        config=stage_config("analysis", "md", "regions"),
        pair=ADAPTIVE_PAIR,
        torch_threads=CFG.torch_threads,
    log:
        "results/logs/analysis/adaptive_seed{seed}.log",
    benchmark:
        "results/benchmarks/analysis/adaptive_seed{seed}.tsv"
    wildcard_constraints:
        seed=r"\d+",
    threads: SPEED_RESERVED_CORES
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={params.torch_threads} python -m pipeline adaptive-table --config-json {params.config:q} "
        "--hf {input.hf} --lf {input.lf} --lf-independent {input.lf_independent} --pair {params.pair} "
        "--seed {wildcards.seed} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule adaptive_table:
    input:
        tables=expand(rules.adaptive_seed.output.csv, seed=ADAPTIVE_SEEDS),
        figures=expand(rules.adaptive_seed.output.png, seed=ADAPTIVE_SEEDS),
    output:
        csv="results/tables/adaptive.csv",
        md="results/tables/adaptive.md",
    log:
        "results/logs/analysis/adaptive.log",
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline adaptive-seeds --tables {input.tables} --figures {input.figures} "
        "--csv {output.csv} --md {output.md} > {log} 2>&1"


rule adaptive:
    input:
        rules.adaptive_table.output,
