# Stage "analysis": the paper's results from the trained pairs and the MD runs. One rule per result,
# each one CLI call (pipeline/analysis/), each writing a table (CSV + Markdown) and a figure (PNG) with
# a caption for `snakemake --report`; then the one-page summary. Needs train.smk and md.smk included
# first (expert_checkpoint, rules.md, rules.cotraining_table, MD_RUNS, TRAIN_PAIRS).
#
# GPU: the code picks the device itself (config key device: auto -> CUDA when present).
# Speed: the rule reserves SPEED_RESERVED_CORES cores (capped by --cores), so that with the default
# `snakemake --cores 2` no other job runs beside it while it times; the timing itself runs in one
# process with torch_threads threads (OMP_NUM_THREADS likewise).

SPEED_RESERVED_CORES = 2

ANALYSIS_CHECKPOINTS = {
    "hf": [expert_checkpoint("hf", pair) for pair in TRAIN_PAIRS],
    "lf": [expert_checkpoint("lf", pair) for pair in TRAIN_PAIRS],
}


rule accuracy:
    input:
        unpack(generalisation_input),  # the shipped generalisation set when it exists (generalisation.smk)
        dataset=rules.ingest.output.dataset,
        **ANALYSIS_CHECKPOINTS,
    output:
        csv="results/tables/accuracy.csv",
        md="results/tables/accuracy.md",
        png=report(
            "results/figures/parity.png",
            caption="../report/parity.rst",
            category="1. Accuracy",
        ),
    params:
        config=stage_config("analysis", "md", "regions", "train", "ingest", "generalisation"),
        pairs=TRAIN_PAIRS,
        generalisation_arg=lambda wildcards, input: (
            f"--generalisation {input.generalisation}" if "generalisation" in input.keys() else ""
        ),
    log:
        "results/logs/analysis/accuracy.log",
    benchmark:
        "results/benchmarks/analysis/accuracy.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline accuracy --config-json {params.config:q} "
        "--dataset {input.dataset} {params.generalisation_arg} --pairs {params.pairs} --hf {input.hf} "
        "--lf {input.lf} --csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule conservation:
    input:
        thermo=expand(rules.md.output.thermo, run=MD_RUNS),
        summaries=expand(rules.md.output.summary, run=MD_RUNS),
    output:
        csv="results/tables/conservation.csv",
        md="results/tables/conservation.md",
        png=report(
            "results/figures/energy_traces.png",
            caption="../report/energy_traces.rst",
            category="2. Energy conservation",
        ),
    params:
        config=stage_config("train"),
        runs=MD_RUNS,
    log:
        "results/logs/analysis/conservation.log",
    benchmark:
        "results/benchmarks/analysis/conservation.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline conservation --config-json {params.config:q} --runs {params.runs} "
        "--thermo {input.thermo} --summaries {input.summaries} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule eos:
    input:
        dataset=rules.ingest.output.dataset,
        **ANALYSIS_CHECKPOINTS,
    output:
        csv="results/tables/eos.csv",
        md="results/tables/eos.md",
        png=report(
            "results/figures/eos.png",
            caption="../report/eos.rst",
            category="3. Equation of state",
        ),
    params:
        config=stage_config("analysis", "md", "train"),
        pairs=TRAIN_PAIRS,
    log:
        "results/logs/analysis/eos.log",
    benchmark:
        "results/benchmarks/analysis/eos.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline eos --config-json {params.config:q} "
        "--dataset {input.dataset} --pairs {params.pairs} --hf {input.hf} --lf {input.lf} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule elastic:
    input:
        unpack(elastic_dft_input),
        **ANALYSIS_CHECKPOINTS,
    output:
        csv="results/tables/elastic.csv",
        md="results/tables/elastic.md",
        png=report(
            "results/figures/elastic.png",
            caption="../report/elastic.rst",
            category="3. Equation of state",
        ),
    params:
        config=stage_config("analysis", "md"),
        pairs=TRAIN_PAIRS,
        dft_arg=lambda wildcards, input: f"--dft-set {input.dft}" if "dft" in input.keys() else "",
    log:
        "results/logs/analysis/elastic.log",
    benchmark:
        "results/benchmarks/analysis/elastic.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline elastic --config-json {params.config:q} "
        "{params.dft_arg} --pairs {params.pairs} --hf {input.hf} --lf {input.lf} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule interface:
    input:
        **ANALYSIS_CHECKPOINTS,
    output:
        csv="results/tables/interface.csv",
        md="results/tables/interface.md",
        png=report(
            "results/figures/interface_profile.png",
            caption="../report/interface_profile.rst",
            category="4. Interface mismatch",
        ),
    params:
        config=stage_config("analysis"),
        pairs=TRAIN_PAIRS,
    log:
        "results/logs/analysis/interface.log",
    benchmark:
        "results/benchmarks/analysis/interface.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline interface --config-json {params.config:q} "
        "--pairs {params.pairs} --hf {input.hf} --lf {input.lf} "
        "--csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule speed:
    input:
        hf=expert_checkpoint("hf", "cotrained"),
        lf=expert_checkpoint("lf", "cotrained"),
    output:
        csv="results/tables/speed.csv",
        md="results/tables/speed.md",
        png=report(
            "results/figures/speed.png",
            caption="../report/speed.rst",
            category="5. Speed",
        ),
    params:
        config=stage_config("analysis", "md", "regions"),
        torch_threads=CFG.torch_threads,
    log:
        "results/logs/analysis/speed.log",
    benchmark:
        "results/benchmarks/analysis/speed.tsv"
    threads: SPEED_RESERVED_CORES
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={params.torch_threads} python -m pipeline speed --config-json {params.config:q} "
        "--hf {input.hf} --lf {input.lf} --csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule learning_curves:
    input:
        metrics=list(training_metrics().values()),
    output:
        csv="results/tables/training.csv",
        md="results/tables/training.md",
        png=report(
            "results/figures/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="1. Accuracy",
        ),
    params:
        config=stage_config(),
        stages=list(training_metrics()),
    log:
        "results/logs/analysis/learning_curves.log",
    benchmark:
        "results/benchmarks/analysis/learning_curves.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline learning-curves --config-json {params.config:q} --stages {params.stages} "
        "--metrics {input.metrics} --csv {output.csv} --md {output.md} --png {output.png} > {log} 2>&1"


rule robustness_seed:
    input:
        dataset=rules.ingest.output.dataset,
        hf=lambda wildcards: [expert_checkpoint("hf", pair, wildcards.seed) for pair in TRAIN_PAIRS],
        lf=lambda wildcards: [expert_checkpoint("lf", pair, wildcards.seed) for pair in TRAIN_PAIRS],
    output:
        csv="results/robustness/seed{seed}.csv",
    params:
        config=stage_config("analysis", "md", "regions", "train"),
        pairs=TRAIN_PAIRS,
    log:
        "results/logs/analysis/robustness_seed{seed}.log",
    benchmark:
        "results/benchmarks/analysis/robustness_seed{seed}.tsv"
    threads: 1
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline robustness-seed --config-json {params.config:q} "
        "--seed {wildcards.seed} --dataset {input.dataset} --pairs {params.pairs} --hf {input.hf} --lf {input.lf} "
        "--csv {output.csv} > {log} 2>&1"


rule robustness:
    input:
        rows=expand(rules.robustness_seed.output.csv, seed=CFG.robustness.seeds),
    output:
        csv="results/tables/robustness.csv",
        md="results/tables/robustness.md",
    params:
        config=stage_config("analysis"),
    log:
        "results/logs/analysis/robustness.log",
    benchmark:
        "results/benchmarks/analysis/robustness.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline robustness --config-json {params.config:q} --rows {input.rows} "
        "--csv {output.csv} --md {output.md} > {log} 2>&1"


rule summary:
    input:
        accuracy=rules.accuracy.output.csv,
        conservation=rules.conservation.output.csv,
        eos=rules.eos.output.csv,
        elastic=rules.elastic.output.csv,
        interface=rules.interface.output.csv,
        cotraining=rules.cotraining_table.output.csv,
        speed=rules.speed.output.csv,
        robustness=rules.robustness.output.csv,
    output:
        summary=report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="0. Summary",
        ),
    params:
        config=stage_config("analysis", "md", "train", "data"),
    log:
        "results/logs/analysis/summary.log",
    benchmark:
        "results/benchmarks/analysis/summary.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline summary --config-json {params.config:q} --accuracy {input.accuracy} "
        "--conservation {input.conservation} --eos {input.eos} --elastic {input.elastic} --interface {input.interface} "
        "--cotraining {input.cotraining} --speed {input.speed} --robustness {input.robustness} "
        "--output {output.summary} > {log} 2>&1"
