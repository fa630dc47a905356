# Stage "md": the production cell (Pt(111) slab + CO) with its static HF/LF partition, then one LAMMPS
# NVE/NVT run per {run}: full HF and full LF (experts of md.reference_pair), and the mixture of each
# trained pair (moe_independent, moe_cotrained). Needs train.smk included first (expert_checkpoint).
#
# Adaptive partition: with md.partition.mode: adaptive the mixture runs (moe_*) use a smooth, per-step HF
# weight lambda per atom (radii and margin of md.partition.adaptive; inner radius default: the LF
# checkpoint's r_max; pipeline/md/adaptive.py) instead of the cell file's static partition, the thermo
# table counts the HF and LF centres of every row, and partition.png shows lambda at t = 0 (md_system then
# also reads models.lf for the default inner radius); same rules, same files. It runs on one MPI rank only:
# a moe_* job with md.run.mpi_ranks > 1 and mode adaptive fails at its start, before mpirun.
#
# Each run writes restart files to results/md/{run}/state/ every md.run.restart_interval steps. The state
# is NOT a declared output, so Snakemake never deletes it: a killed job rerun with --rerun-incomplete
# resumes from the last restart. It is removed after a successful run; a leftover state from other
# inputs is an error that asks to delete it. After a blow-up the last good state is
# results/md/{run}/state/last_good.extxyz.
#
# GPU: the code picks the device itself (config key device: auto -> CUDA when present). On a cluster give
# the rule its GPUs with `--set-resources md:gpu=N` (the slurm executor plugin maps it). No gpu resource
# is declared here, so CPU-only runs are not blocked by an absent counter.
#
# MPI: md.run.mpi_ranks N > 1 runs LAMMPS on N ranks (domain decomposition; fix external evaluates each
# rank's local atoms with its ghosts). The rule reserves N threads and runs the same command: `python -m
# pipeline md` reads N from the JSON config and starts itself again under `mpirun -np N` (the mpich
# wheel's mpirun; $PIPELINE_MPIRUN, e.g. "srun -n {n}", to use another launcher), one torch thread per
# rank from torch_threads; under device: auto each rank takes GPU (local rank mod GPU count). N = 1 (the
# default) runs exactly as before, on one process.

# The runs (the analysis reads these names) and the expert checkpoints of each: moe_<pair> = both experts
# of <pair>; hf / lf = that expert of md.reference_pair on every atom.
MD_RUNS = list(names.MD_RUNS)
MD_RANKS = int(CFG.md.run.mpi_ranks)  # MPI ranks of one run (md.run.mpi_ranks)
MD_CHECKPOINTS = {
    "hf": {"hf": expert_checkpoint("hf", CFG.md.reference_pair)},
    "lf": {"lf": expert_checkpoint("lf", CFG.md.reference_pair)},
    **{names.moe_run(pair): pair_checkpoints(pair) for pair in TRAIN_PAIRS},
}


# md_system reads models.lf (its r_max: the default inner radius of the picture) only in mode adaptive, so
# that a static run's params, and with them its outputs, stay as they were
MD_SYSTEM_SECTIONS = ("md", "regions", *(("models.lf",) if CFG.md.partition.mode == "adaptive" else ()))


rule md_system:
    output:
        cell="results/md/system/cell.extxyz",
        png="results/md/system/partition.png",
    params:
        config=stage_config(*MD_SYSTEM_SECTIONS),
    log:
        "results/logs/md_system.log",
    benchmark:
        "results/benchmarks/md_system/md_system.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline md-system --config-json {params.config:q} --cell {output.cell} --png {output.png} "
        "> {log} 2>&1"


rule md:
    input:
        unpack(lambda wildcards: MD_CHECKPOINTS[wildcards.run]),
        cell=rules.md_system.output.cell,
    output:
        thermo="results/md/{run}/thermo.csv",
        final="results/md/{run}/final.extxyz",
        dump="results/md/{run}/dump.lammpstrj",
        summary="results/md/{run}/summary.json",
    params:
        config=stage_config("md", "models", "regions"),
        experts=lambda wildcards, input: " ".join(
            f"--{name} {input[name]}" for name in MD_CHECKPOINTS[wildcards.run]
        ),
        state_dir="results/md/{run}/state",
    log:
        "results/logs/md/{run}.log",
    benchmark:
        "results/benchmarks/md/{run}.tsv"
    threads: MD_RANKS
    wildcard_constraints:
        run="|".join(MD_RUNS),
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline md --config-json {params.config:q} --run {wildcards.run} "
        "{params.experts} --cell {input.cell} --thermo {output.thermo} --final {output.final} "
        "--dump {output.dump} --summary {output.summary} --state-dir {params.state_dir} > {log} 2>&1"
