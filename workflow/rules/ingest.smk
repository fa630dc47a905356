# Stage "ingest": DFT outputs -> canonical dataset, manifest, statistics, rejected frames.


rule ingest:
    input:
        dft=ingest_inputs,
    output:
        dataset="results/data/dataset.extxyz",
        manifest="results/data/manifest.json",
        rejected="results/data/rejected.csv",
        stats_csv="results/tables/dataset_stats.csv",
        stats_md="results/tables/dataset_stats.md",
    params:
        config=stage_config("data", "ingest", "regions"),
        inputs=ingest_input_args,
    log:
        "results/logs/ingest.log",
    benchmark:
        "results/benchmarks/ingest.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline ingest --config-json {params.config:q} --inputs {params.inputs} "
        "--dataset {output.dataset} --manifest {output.manifest} --rejected {output.rejected} "
        "--stats-csv {output.stats_csv} --stats-md {output.stats_md} > {log} 2>&1"
