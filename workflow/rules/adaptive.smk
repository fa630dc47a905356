# Issue 18, the analysis of the adaptive partition: ASE NVE runs of the md.system cell (no fixed atoms) with
# the adaptive partition (md.partition.adaptive), the static partition (md.partition rule) and full HF, the C
# atom of one CO dragged across the surface by a static lateral harmonic well that is part of the
# Hamiltonian; energy drift, momentum drift, HF centres per step, LF next to C, and the speedup over full HF
# of one step on a ~2000-atom slab with the speed table's CO coverage (pipeline/analysis/adaptive.py).
# Target `adaptive`; NOT part of the default run (rule all). Needs common.smk and analysis.smk included
# first (expert_checkpoint, stage_config, SPEED_RESERVED_CORES). About 15 min on 2 cores with the default
# experts (3 runs x 1500 steps of the 224-atom cell, ~0.45 s per step for the three, then ~2-3 min of timing).
#
# The rule reserves SPEED_RESERVED_CORES cores (as the speed rule) so that no other job runs beside the
# timing; the runs themselves use torch_threads threads.

ADAPTIVE_PAIR = "cotrained"


rule adaptive_table:
    input:
        hf=expert_checkpoint("hf", ADAPTIVE_PAIR),
        lf=expert_checkpoint("lf", ADAPTIVE_PAIR),
    output:
        csv="results/tables/adaptive.csv",
        md="results/tables/adaptive.md",
        png=report("results/figures/adaptive_lambda.png", category="6. Adaptive partition"),
    params:
        config=stage_config("analysis", "md", "regions"),
        pair=ADAPTIVE_PAIR,
        torch_threads=CFG.torch_threads,
    log:
        "results/logs/analysis/adaptive.log",
    benchmark:
        "results/benchmarks/analysis/adaptive.tsv"
    threads: SPEED_RESERVED_CORES
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={params.torch_threads} python -m pipeline adaptive-table --config-json {params.config:q} "
        "--hf {input.hf} --lf {input.lf} --pair {params.pair} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule adaptive:
    input:
        rules.adaptive_table.output,
