# Stage "sample": configuration -> unlabelled structures (bulk Pt, clean Pt(111), CO on Pt(111), gas CO),
# split into label.n_chunks extxyz files of similar estimated DFT cost.


rule sample:
    output:
        chunks=expand("results/sample/chunk_{chunk}.extxyz", chunk=range(CFG.label.n_chunks)),
    params:
        config=stage_config("sample", "label"),
    log:
        "results/logs/sample.log",
    benchmark:
        "results/benchmarks/sample/sample.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline sample --config-json {params.config:q} --chunks {output.chunks} > {log} 2>&1"
