# Active learning from the mixture's own MD (issue 16, part 2; pipeline.active; config section active:).
# NOT part of the default run: `snakemake active --cores 2` runs active.iterations = N iterations.
#
# Iteration i (results/active/iter{i}/):
#   data/        ingest of data.paths + the frames labelled in iterations < i (the ingest rule, other paths)
#   models/      HF committee (train_hf for every active.committee_seeds) + the LF of active.pair for the first
#                seed (train_lf / train_pair): the train rules of train.smk with other paths
#   explore/     al_explore, one job per cell: Langevin MD of the mixture and full HF, snapshots
#   score/       al_score: committee force spread, descriptors
#   selected/    checkpoint al_select: labelling chunks (active.select.chunk_size frames each)
#   label/       al_label, one job per chunk: the label rule (cached per frame in results/active/label/cache,
#                resumable, failures recorded) with other paths
#   labelled.extxyz, failures.csv   checkpoint al_label_merge (merge-labels)
#   report/      al_report: calibration (CSV, PNG) and the iteration's row
# then results/active/tables/active.{csv,md} (al_table), results/active/iter{N}/data/ (the grown dataset) and
# the grown labelled set with its README in active.ship_dir (al_ship). Nothing is written to resources/: run
# `python -m pipeline al-ship ... --dest resources/dft` (the command is in the shipped README) to ship it.
#
# Labels: label.calculator (gpaw = DFT with the label: settings; emt = NOT DFT, smoke runs only).

wildcard_constraints:
    iter=r"\d+",


use rule ingest as al_ingest with:
    input:
        dft=al_ingest_inputs,
    output:
        dataset="results/active/iter{iter}/data/dataset.extxyz",
        manifest="results/active/iter{iter}/data/manifest.json",
        rejected="results/active/iter{iter}/data/rejected.csv",
        stats_csv="results/active/iter{iter}/data/dataset_stats.csv",
        stats_md="results/active/iter{iter}/data/dataset_stats.md",
    params:
        config=stage_config("data", "ingest", "regions"),
        inputs=al_ingest_input_args,
    log:
        "results/active/iter{iter}/logs/ingest.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/ingest.tsv"


use rule train_hf as al_train_hf with:
    input:
        dataset=rules.al_ingest.output.dataset,
    output:
        hf="results/active/iter{iter}/models/seed{seed}/hf.pt",
        metrics="results/active/iter{iter}/models/seed{seed}/hf_metrics.csv",
    params:
        config=TRAIN_CONFIG,
        state_dir="results/active/iter{iter}/models/seed{seed}/hf_state",
    log:
        "results/active/iter{iter}/logs/train/seed{seed}/hf.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/train/seed{seed}/hf.tsv"


use rule train_lf as al_train_lf with:
    input:
        dataset=rules.al_ingest.output.dataset,
        anchor=rules.al_train_hf.output.hf,
    output:
        lf="results/active/iter{iter}/models/seed{seed}/{pair}/lf.pt",
        metrics="results/active/iter{iter}/models/seed{seed}/{pair}/metrics.csv",
    params:
        config=TRAIN_CONFIG,
        state_dir="results/active/iter{iter}/models/seed{seed}/{pair}/state",
    log:
        "results/active/iter{iter}/logs/train/seed{seed}/lf_{pair}.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/train/seed{seed}/lf_{pair}.tsv"


if SYMMETRIC:

    use rule train_pair as al_train_pair with:
        input:
            dataset=rules.al_ingest.output.dataset,
        output:
            hf="results/active/iter{iter}/models/seed{seed}/{pair}/hf.pt",
            lf="results/active/iter{iter}/models/seed{seed}/{pair}/lf.pt",
            metrics="results/active/iter{iter}/models/seed{seed}/{pair}/metrics.csv",
        params:
            config=TRAIN_CONFIG,
            state_dir="results/active/iter{iter}/models/seed{seed}/{pair}/state",
        log:
            "results/active/iter{iter}/logs/train/seed{seed}/pair_{pair}.log",
        benchmark:
            "results/benchmarks/active/iter{iter}/train/seed{seed}/pair_{pair}.tsv"


rule al_explore:
    input:
        unpack(al_explore_models),
    output:
        frames="results/active/iter{iter}/explore/{cell}.extxyz",
        trajectories="results/active/iter{iter}/explore/{cell}.csv",
    params:
        config=AL_CONFIG,
        lf=lambda wildcards, input: f"--lf {input.lf}" if "lf" in input.keys() else "",
    log:
        "results/active/iter{iter}/logs/explore/{cell}.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/explore/{cell}.tsv"
    threads: 1
    wildcard_constraints:
        cell="|".join(re.escape(c) for c in AL.explore.cells),
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline al-explore --config-json {params.config:q} "
        "--cell {wildcards.cell} --iteration {wildcards.iter} --hf {input.hf} {params.lf} "
        "--frames {output.frames} --trajectories {output.trajectories} > {log} 2>&1"


rule al_score:
    input:
        frames=lambda wildcards: expand(rules.al_explore.output.frames, iter=wildcards.iter, cell=AL.explore.cells),
        committee=al_committee,
    output:
        scored="results/active/iter{iter}/score/scored.extxyz",
        scores="results/active/iter{iter}/score/scores.csv",
        descriptors="results/active/iter{iter}/score/descriptors.npz",
    params:
        config=AL_CONFIG,
    log:
        "results/active/iter{iter}/logs/score.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/score.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline al-score --config-json {params.config:q} "
        "--frames {input.frames} --committee {input.committee} --scored {output.scored} "
        "--scores {output.scores} --descriptors {output.descriptors} > {log} 2>&1"


checkpoint al_select:
    input:
        scored=rules.al_score.output.scored,
        scores=rules.al_score.output.scores,
        descriptors=rules.al_score.output.descriptors,
    output:
        directory=directory("results/active/iter{iter}/selected"),
    params:
        config=AL_CONFIG,
    log:
        "results/active/iter{iter}/logs/select.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/select.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline al-select --config-json {params.config:q} --scored {input.scored} "
        "--scores {input.scores} --descriptors {input.descriptors} --directory {output.directory} > {log} 2>&1"


use rule label as al_label with:
    input:
        structures="results/active/iter{iter}/selected/chunk_{chunk}.extxyz",
    output:
        labelled="results/active/iter{iter}/label/labelled_{chunk}.extxyz",
        failures="results/active/iter{iter}/label/failures_{chunk}.csv",
    params:
        config=stage_config("sample", "label"),
        cache_dir="results/active/label/cache",
        calc_log_dir="results/active/iter{iter}/label/calc_logs/chunk_{chunk}",
    log:
        "results/active/iter{iter}/logs/label/chunk_{chunk}.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/label/chunk_{chunk}.tsv"


checkpoint al_label_merge:
    input:
        labelled=al_label_chunks("labelled"),
        failures=al_label_chunks("failures"),
    output:
        labelled="results/active/iter{iter}/labelled.extxyz",
        failures="results/active/iter{iter}/failures.csv",
    log:
        "results/active/iter{iter}/logs/label_merge.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/label_merge.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline merge-labels --labelled {input.labelled} --failures-in {input.failures} "
        "--output {output.labelled} --failures {output.failures} > {log} 2>&1"


rule al_report:
    input:
        dataset=rules.al_ingest.output.dataset,
        committee=al_committee,
        trajectories=lambda wildcards: expand(
            rules.al_explore.output.trajectories, iter=wildcards.iter, cell=AL.explore.cells
        ),
        scores=rules.al_score.output.scores,
        selected=rules.al_select.output.directory,
        labelled=rules.al_label_merge.output.labelled,
        failures=rules.al_label_merge.output.failures,
    output:
        row="results/active/iter{iter}/report/row.json",
        calibration_csv="results/active/iter{iter}/report/calibration.csv",
        calibration_png="results/active/iter{iter}/report/calibration.png",
    params:
        config=AL_REPORT_CONFIG,
    log:
        "results/active/iter{iter}/logs/report.log",
    benchmark:
        "results/benchmarks/active/iter{iter}/report.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline al-report --config-json {params.config:q} "
        "--iteration {wildcards.iter} --dataset {input.dataset} --committee {input.committee} "
        "--trajectories {input.trajectories} --scores {input.scores} --selected {input.selected}/selected.csv "
        "--labelled {input.labelled} --failures {input.failures} --row {output.row} "
        "--calibration-csv {output.calibration_csv} --calibration-png {output.calibration_png} > {log} 2>&1"


rule al_table:
    input:
        rows=expand(rules.al_report.output.row, iter=AL_ITERATIONS),
    output:
        csv="results/active/tables/active.csv",
        md="results/active/tables/active.md",
    log:
        "results/active/logs/table.log",
    benchmark:
        "results/benchmarks/active/table.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline al-table --rows {input.rows} --csv {output.csv} --md {output.md} > {log} 2>&1"


rule al_ship:
    input:
        base=ingest_inputs,
        added=expand(rules.al_label_merge.output.labelled, iter=AL_ITERATIONS),
        failures=expand(rules.al_label_merge.output.failures, iter=AL_ITERATIONS),
        table=rules.al_table.output.md,
    output:
        labelled=f"{AL.ship_dir}/pt_co_gpaw.extxyz",
        readme=f"{AL.ship_dir}/README.md",
    params:
        config=stage_config("label"),
        base=ingest_input_args,
        dest=lambda wildcards, output: str(Path(output.readme).parent),
    log:
        "results/active/logs/ship.log",
    benchmark:
        "results/benchmarks/active/ship.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline al-ship --config-json {params.config:q} --base {params.base} --added {input.added} "
        "--failures {input.failures} --table-md {input.table} --dest {params.dest} > {log} 2>&1"


rule active:
    input:
        table=rules.al_table.output.csv,
        grown=expand(rules.al_ingest.output.dataset, iter=AL.iterations),
        shipped=rules.al_ship.output.readme,
