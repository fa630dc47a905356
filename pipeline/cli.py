"""Command-line interface: one subcommand per pipeline stage (``moe-mlip STAGE`` or ``python -m pipeline STAGE``).

Each subcommand parses its arguments, builds the typed configuration and calls one function of the
library; Snakemake rules call these subcommands with explicit input and output paths.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from pipeline.config import Config, ConfigError, config_from_dict, load_config
from pipeline.errors import PipelineInputError

log = logging.getLogger("pipeline")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config",
        default="config/config.yaml",
        help="YAML configuration file (validated against workflow/schemas/config.schema.yaml)",
    )
    group.add_argument(
        "--config-json",
        default=None,
        help="the configuration as a JSON string (used by the Snakemake rules); overrides --config",
    )


def config_from_args(args: argparse.Namespace, *, check_files: bool = False) -> Config:
    """The validated configuration named by ``--config`` / ``--config-json``."""
    if args.config_json is not None:
        return config_from_dict(json.loads(args.config_json), check_files=check_files)
    return load_config(args.config, check_files=check_files)


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="read, validate, label and split DFT data into the canonical dataset",
        description=(
            "Reads DFT outputs (extxyz, ASE db, VASP OUTCAR / vasprun.xml, Quantum ESPRESSO and GPAW "
            "text output) through ase.io, validates every frame (rejected frames are written aside "
            "with their reason), labels every atom bulk or complex, assigns a deterministic "
            "train/validation/test split by structure group and writes the dataset (extxyz), a "
            "manifest (JSON) and a statistics table (CSV + Markdown)."
        ),
    )
    _add_config_args(p)
    p.add_argument(
        "--inputs",
        nargs="+",
        default=None,
        help="DFT files, directories or globs (default: data.paths of the configuration)",
    )
    p.add_argument("--dataset", required=True, help="output: canonical dataset, extxyz")
    p.add_argument("--manifest", required=True, help="output: manifest, JSON")
    p.add_argument("--rejected", required=True, help="output: rejected frames with reasons, CSV")
    p.add_argument("--stats-csv", required=True, help="output: statistics table, CSV")
    p.add_argument("--stats-md", required=True, help="output: statistics table, Markdown")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> None:
    from pipeline.data.ingest import ingest, write_ingest_outputs

    cfg = config_from_args(args, check_files=args.inputs is None)
    result = ingest(cfg, paths=args.inputs)
    write_ingest_outputs(
        result,
        dataset=args.dataset,
        manifest=args.manifest,
        rejected=args.rejected,
        stats_csv=args.stats_csv,
        stats_md=args.stats_md,
    )


# ---------------------------------------------------------------------------------------------
# sample / label / merge-labels / dft-sanity
# ---------------------------------------------------------------------------------------------


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample unlabelled structures (bulk Pt, clean Pt(111), CO on Pt(111), gas CO) into chunk files",
        description=(
            "Builds every structure family of the sample: section (deterministic for the seed) and "
            "splits them into label.n_chunks extxyz files of similar estimated DFT cost."
        ),
    )
    _add_config_args(p)
    p.add_argument("--chunks", nargs="+", required=True,
                   help="output: one extxyz file per chunk (exactly label.n_chunks paths)")
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> None:
    from pipeline.data.sampling import write_sample_chunks

    write_sample_chunks(config_from_args(args), args.chunks)


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="label one chunk of structures with GPAW (DFT) or EMT (not DFT); resumable",
        description=(
            "Computes energy, forces (and stress of bulk cells) of every structure of one chunk with "
            "label.calculator, caching each result in --cache-dir as soon as it is done; a rerun "
            "skips cached structures. SCF failures are retried once with a damped mixer, then "
            "recorded in the failures CSV."
        ),
    )
    _add_config_args(p)
    p.add_argument("--structures", required=True, help="input: unlabelled structures, extxyz")
    p.add_argument("--output", required=True, help="output: labelled frames, extxyz")
    p.add_argument("--failures", required=True, help="output: failed structures with reasons, CSV")
    p.add_argument("--cache-dir", required=True, help="directory of the per-structure result cache")
    p.add_argument("--log-dir", required=True, help="directory of the per-structure calculator logs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_label)


def _run_label(args: argparse.Namespace) -> None:
    from pipeline.data.labelling import label_file

    label_file(
        config_from_args(args),
        args.structures,
        args.output,
        args.failures,
        cache_dir=args.cache_dir,
        log_dir=args.log_dir,
        progress=not args.no_progress,
    )


def _add_merge_labels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge-labels",
        help="merge labelled chunks and their failures CSVs",
        description="Concatenates labelled chunk files in sampling order, and their failures tables.",
    )
    p.add_argument("--labelled", nargs="+", required=True, help="input: labelled chunk files, extxyz")
    p.add_argument("--failures-in", nargs="+", required=True, help="input: failures CSV of each chunk")
    p.add_argument("--output", required=True, help="output: merged labelled frames, extxyz")
    p.add_argument("--failures", required=True, help="output: merged failures, CSV")
    p.set_defaults(func=_run_merge_labels)


def _run_merge_labels(args: argparse.Namespace) -> None:
    from pipeline.data.labelling import merge_labels

    merge_labels(args.labelled, args.failures_in, args.output, args.failures)


def _add_dft_sanity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dft-sanity",
        help="sanity table of a labelled set: bulk Pt EOS vs the PBE reference, CO adsorption energies",
        description=(
            "Fits a Birch-Murnaghan EOS to the bulk EOS frames (V0, B0, B0') beside ASE's dcdft "
            "WIEN2k PBE reference, and computes CO adsorption energies on top and fcc sites from the "
            "ideal geometries; writes CSV and Markdown, and optionally the README of the shipped set."
        ),
    )
    p.add_argument("--labelled", required=True, help="input: labelled frames, extxyz")
    p.add_argument("--failures", default=None, help="input: failures CSV (for the README)")
    p.add_argument("--csv", required=True, help="output: sanity table, CSV")
    p.add_argument("--md", required=True, help="output: sanity table, Markdown")
    p.add_argument("--readme", default=None, help="output: README of the labelled set, Markdown")
    p.add_argument("--command", default=None, help="the command that produced the set (for the README)")
    p.set_defaults(func=_run_dft_sanity)


def _run_dft_sanity(args: argparse.Namespace) -> None:
    from pipeline.data.sanity import write_sanity

    write_sanity(args.labelled, csv=args.csv, md=args.md, readme=args.readme, failures=args.failures,
                 command=args.command)


def _add_ship_dft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ship-dft",
        help="copy a labelled set into resources/ with its failures, sanity table and README",
        description=(
            "Copies the merged labelled set to DEST/pt_co_gpaw.extxyz (and DEST/failures.csv when any "
            "structure failed) and writes DEST/sanity.csv, DEST/sanity.md and DEST/README.md (command, "
            "settings, counts per family and config type, failures, total CPU time, sanity table)."
        ),
    )
    p.add_argument("--labelled", required=True, help="input: merged labelled frames, extxyz")
    p.add_argument("--failures", required=True, help="input: merged failures, CSV")
    p.add_argument("--dest", required=True, help="output directory, e.g. resources/dft")
    p.add_argument("--name", default="pt_co_gpaw.extxyz", help="file name of the shipped set in DEST")
    _add_config_args(p)
    p.set_defaults(func=_run_ship_dft)


def _run_ship_dft(args: argparse.Namespace) -> None:
    from pipeline.data.sanity import ship_labelled_set

    cfg = config_from_args(args)
    ship_labelled_set(args.labelled, args.failures, args.dest, name=args.name, label_cfg=cfg.label)


def _add_elastic_dft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "elastic-dft",
        help="label the DFT strain set of the elastic constants (1-atom fcc Pt, fixed k meshes); resumable",
        description=(
            "For each n of --kpts (a fixed n x n x n mesh; the last is shipped, the others are the k-point "
            "convergence check): labels a volume series around --lattice-constant with the label: settings, "
            "fits V0, labels the strain patterns of analysis.elastic.strains at V0, caching every structure "
            "in --cache-dir; writes DEST/pt_elastic_gpaw.extxyz, the coarser meshes' frames, "
            "DEST/kpoint_convergence.csv and DEST/README.md."
        ),
    )
    _add_config_args(p)
    p.add_argument("--kpts", nargs="+", type=int, required=True, help="k meshes n (n x n x n), ascending")
    p.add_argument("--lattice-constant", type=float, default=None,
                   help="centre of the volume series, A (default: sample.lattice_constant_a)")
    p.add_argument("--h-a", type=float, default=None,
                   help="real-space grid spacing, A (default: label.h_a; see the README of the shipped set)")
    p.add_argument("--grid-check-h", nargs="*", type=float, default=[],
                   help="further grid spacings (A) for the symmetry check of the real-space grid (GPAW only)")
    p.add_argument("--cache-dir", required=True, help="directory of the per-structure result cache")
    p.add_argument("--log-dir", required=True, help="directory of the per-structure calculator logs")
    p.add_argument("--dest", required=True, help="output directory, e.g. resources/dft/elastic")
    p.set_defaults(func=_run_elastic_dft)


def _run_elastic_dft(args: argparse.Namespace) -> None:
    import shlex

    from pipeline.analysis.elastic_dft import ship_elastic_set

    cfg = config_from_args(args)
    conv = ship_elastic_set(cfg.label, args.kpts, lattice_constant_a=args.lattice_constant or cfg.sample.lattice_constant_a,
                            strains=cfg.analysis.elastic.strains, cache_dir=args.cache_dir, log_dir=args.log_dir,
                            dest=args.dest, command="python -m pipeline " + shlex.join(sys.argv[1:]), h_a=args.h_a,
                            grid_check_h=args.grid_check_h)
    print(conv.to_string(index=False))


def _add_label_convergence(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label-convergence",
        help="convergence study of the DFT labelling settings on representative frames; resumable",
        description=(
            "Evaluates the frames label_convergence.frames of --labelled with a ladder of GPAW settings that "
            "varies one parameter at a time (k-point density, grid spacing, smearing, LCAO basis) from "
            "label_convergence.base, and with the current label: settings; proposes the cheapest setting within "
            "the tolerances, evaluates it, and writes tables (CSV + Markdown), the CO adsorption energies, the "
            "labelled units and a README into --dest. Every (frame, setting) is cached in --cache-dir."
        ),
    )
    _add_config_args(p)
    p.add_argument("--labelled", default="resources/dft/pt_co_gpaw.extxyz",
                   help="input: labelled frames, extxyz (default: %(default)s)")
    p.add_argument("--cache-dir", required=True, help="directory of the per-unit result cache")
    p.add_argument("--log-dir", required=True, help="directory of the per-unit calculator logs")
    p.add_argument("--dest", required=True, help="output directory, e.g. resources/dft/convergence")
    p.add_argument("--plan", action="store_true",
                   help="list the units (frame, setting, k mesh, cached or not) and stop; computes nothing")
    p.add_argument("--cached-only", action="store_true",
                   help="compute nothing: write the tables from what the cache holds (units not computed are "
                        "listed as pending; rerun without this flag to resume)")
    p.add_argument("--resume-from", default=None, metavar="DIR",
                   help="a shipped study folder (e.g. resources/dft/convergence): its units seed --cache-dir "
                        "first when their geometry and recorded settings match, so only missing units are computed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_label_convergence)


def _run_label_convergence(args: argparse.Namespace) -> None:
    import shlex

    from pipeline.data import convergence as conv

    cfg = config_from_args(args)
    if args.plan:
        print(conv.plan(args.labelled, cfg.label, cfg.label_convergence, cache_dir=args.cache_dir).to_string(index=False))
        return
    result = conv.run_study(args.labelled, cfg.label, cfg.label_convergence, cache_dir=args.cache_dir,
                            log_dir=args.log_dir, progress=not args.no_progress, cached_only=args.cached_only,
                            resume_from=args.resume_from)
    conv.ship_study(result, cfg.label_convergence, cfg.label, dest=args.dest, labelled=args.labelled,
                    command="python -m pipeline " + shlex.join(a for a in sys.argv[1:] if a != "--cached-only"))
    print(result.table.to_string(index=False))


# ---------------------------------------------------------------------------------------------
# train / cotraining-table
# ---------------------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one stage of the experts (HF alone, LF against a frozen HF, or both together); resumable",
        description=(
            "Trains one stage on the dataset of the ingest stage (pipeline.train.run): 'hf' trains the HF "
            "expert alone (shared by both pairs in anchored mode); 'lf' trains the LF expert of --pair "
            "against the frozen HF checkpoint --anchor (cotrained: the agreement terms of the train: section; "
            "independent: every lambda 0); 'pair' trains both experts of --pair together (agreement_mode "
            "symmetric). Each stage selects its experts on its own smoothed validation loss, writes the "
            "selected EMA weights, the per-epoch metrics and a training state after every epoch in "
            "--state-dir, from which a rerun resumes (a corrupt or foreign state is an error, never a silent "
            "restart). Launch with torchrun (torchrun --standalone --nproc_per_node=N -m pipeline train ...) "
            "for data-parallel training."
        ),
    )
    _add_config_args(p)
    p.add_argument("--stage", required=True, choices=("hf", "lf", "pair"), help="which stage to train")
    p.add_argument("--pair", choices=("cotrained", "independent"), help="the pair of an lf or pair stage")
    p.add_argument("--seed", type=int, help="override the configuration's seed (initial weights, batch order, cells)")
    p.add_argument("--train-fraction", type=float, default=1.0,
                   help="train on whole groups holding this fraction of each family's training frames (nested "
                        "subsets for one --subset-seed; validation and test unchanged; default: %(default)s)")
    p.add_argument("--subset-seed", type=int, default=0,
                   help="seed of the group order of --train-fraction (default: %(default)s)")
    p.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
    p.add_argument("--anchor", help="input (stage lf): the frozen HF expert checkpoint (.pt)")
    p.add_argument("--hf", help="output (stages hf, pair): HF expert checkpoint (.pt)")
    p.add_argument("--lf", help="output (stages lf, pair): LF expert checkpoint (.pt)")
    p.add_argument("--metrics", required=True, help="output: per-epoch metrics, CSV")
    p.add_argument("--state-dir", required=True, help="directory of the training state (resumed from if present)")
    p.add_argument("--keep-state", action="store_true", help="keep the training state after a successful run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    import dataclasses

    from pipeline.train import run_training

    cfg = config_from_args(args)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    run_training(cfg, stage=args.stage, pair=args.pair, dataset=args.dataset, hf_path=args.hf, lf_path=args.lf,
                 anchor_path=args.anchor, metrics_path=args.metrics, state_dir=args.state_dir,
                 progress=not args.no_progress, keep_state=args.keep_state,
                 train_fraction=args.train_fraction, subset_seed=args.subset_seed)


def _add_cotraining_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cotraining-table",
        help="test-split accuracy of the HF/LF experts and their disagreement on bulk atoms, per pair",
        description=(
            "Evaluates each pair's HF and LF checkpoints on the test split: energy and force MAE of each "
            "expert (LF on its own bulk data and on all atoms) and the HF-LF per-atom energy and force RMS "
            "on bulk test atoms; writes CSV and Markdown."
        ),
    )
    _add_config_args(p)
    p.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
    p.add_argument("--pairs", nargs="+", required=True, help="pair names, one per checkpoint pair")
    p.add_argument("--hf", nargs="+", required=True, help="input: HF checkpoints, in the order of --pairs")
    p.add_argument("--lf", nargs="+", required=True, help="input: LF checkpoints, in the order of --pairs")
    p.add_argument("--csv", required=True, help="output: table, CSV")
    p.add_argument("--md", required=True, help="output: table, Markdown")
    p.set_defaults(func=_run_cotraining_table)


def _run_cotraining_table(args: argparse.Namespace) -> None:
    from pipeline.analysis.cotraining import cotraining_table, write_cotraining_table

    table = cotraining_table(config_from_args(args), args.dataset, args.pairs, args.hf, args.lf)
    write_cotraining_table(table, csv=args.csv, md=args.md)


# ---------------------------------------------------------------------------------------------
# md-system / md
# ---------------------------------------------------------------------------------------------


def _add_md_system(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "md-system",
        help="build the MD production cell (Pt(111) slab + CO) and its static HF/LF partition",
        description=(
            "Builds the Pt(111)+CO cell of md.system, assigns every atom to the HF or LF expert by the rule "
            "of md.partition, and writes the cell with its per-atom 'expert' array (extxyz) and a picture "
            "of the partition (PNG, side and top views)."
        ),
    )
    _add_config_args(p)
    p.add_argument("--cell", required=True, help="output: cell with the partition, extxyz")
    p.add_argument("--png", required=True, help="output: picture of the partition, PNG")
    p.set_defaults(func=_run_md_system)


def _run_md_system(args: argparse.Namespace) -> None:
    from pipeline.md.stage import build_md_system

    build_md_system(config_from_args(args), cell=args.cell, png=args.png)


def _add_md(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "md",
        help="LAMMPS MD of the production cell with one expert or the HF/LF mixture; resumable",
        description=(
            "Runs LAMMPS (fix external callback into the torch potential) on the cell of md-system: the "
            "mixture when both --hf and --lf are given (partition from the cell file), else the one expert "
            "on every atom. Langevin NVT equilibration (md.run.equilibration_steps at md.run.temperature_k), "
            "then the production: ensemble, timestep, steps and intervals from md.run; blow-up limits from "
            "md.safety. Restart files go to --state-dir every md.run.restart_interval steps, and a rerun "
            "resumes from the last one; after a blow-up the last good state is in --state-dir."
        ),
    )
    _add_config_args(p)
    p.add_argument("--run", required=True, help="label of the run, e.g. hf, lf, moe_independent, moe_cotrained")
    p.add_argument("--hf", default=None, help="input: HF expert checkpoint (.pt)")
    p.add_argument("--lf", default=None, help="input: LF expert checkpoint (.pt)")
    p.add_argument("--cell", required=True, help="input: cell with the partition, extxyz (from md-system)")
    p.add_argument("--thermo", required=True, help="output: thermo table, CSV")
    p.add_argument("--final", required=True, help="output: final structure with velocities and forces, extxyz")
    p.add_argument("--dump", required=True, help="output: LAMMPS dump (text, custom style)")
    p.add_argument("--summary", required=True, help="output: run summary (sizes, timings, drift), JSON")
    p.add_argument("--state-dir", required=True, help="directory of restart files (resumed from if present)")
    p.set_defaults(func=_run_md)


def _run_md(args: argparse.Namespace) -> None:
    from pipeline.md.stage import run_md

    checkpoints = {name: path for name, path in (("hf", args.hf), ("lf", args.lf)) if path is not None}
    if not checkpoints:
        raise ConfigError("md needs --hf, --lf or both")
    run_md(config_from_args(args), run=args.run, checkpoints=checkpoints, cell=args.cell, thermo_csv=args.thermo,
           final=args.final, dump=args.dump, summary=args.summary, state_dir=args.state_dir)


# ---------------------------------------------------------------------------------------------
# analysis: accuracy / conservation / eos / elastic / interface / speed / summary
# ---------------------------------------------------------------------------------------------


def _add_pair_args(p: argparse.ArgumentParser, *, reference: bool = True) -> None:
    p.add_argument("--pairs", nargs="+", required=True, help="pair names (e.g. independent cotrained)")
    p.add_argument("--hf", nargs="+", required=True, help="input: HF checkpoints, in the order of --pairs")
    p.add_argument("--lf", nargs="+", required=True, help="input: LF checkpoints, in the order of --pairs")
    if reference:
        p.add_argument("--reference-pair", default=None,
                       help="pair whose HF expert is the model 'hf' (default: md.reference_pair of the configuration)")


def _pairs(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    if not (len(args.pairs) == len(args.hf) == len(args.lf)):
        raise ConfigError(f"need one --hf and one --lf checkpoint per pair: {len(args.pairs)} pairs, "
                          f"{len(args.hf)} HF, {len(args.lf)} LF")
    return {pair: {"hf": hf, "lf": lf} for pair, hf, lf in zip(args.pairs, args.hf, args.lf)}


def _reference_pair(args: argparse.Namespace, cfg: Config) -> str:
    ref = args.reference_pair or cfg.md.reference_pair
    if ref not in args.pairs:
        raise ConfigError(f"reference pair {ref!r} is not among --pairs {args.pairs}")
    return ref


def _add_table_outputs(p: argparse.ArgumentParser, *, png: str | None) -> None:
    p.add_argument("--csv", required=True, help="output: table, CSV")
    p.add_argument("--md", required=True, help="output: table, Markdown")
    if png is not None:
        p.add_argument("--png", required=True, help=f"output: {png}, PNG")


def _add_accuracy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "accuracy",
        help="energy/force errors of every expert and mixture on held-out DFT data, by region and family",
        description=(
            "Evaluates the HF and LF experts of each pair and each pair's mixture (partition rule of "
            "md.partition applied to every frame) on the analysis.accuracy.split split of the dataset: energy "
            "(meV/atom) and force (meV/A) MAE and RMSE by atom region and structure family; parity plots."
        ),
    )
    _add_config_args(p)
    p.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
    p.add_argument("--generalisation", default=None,
                   help="input: the shipped generalisation set, extxyz (rows of split 'generalisation'); omitted: "
                        "the table says that the set is absent")
    _add_pair_args(p)
    _add_table_outputs(p, png="parity plots")
    p.set_defaults(func=_run_accuracy)


def _run_accuracy(args: argparse.Namespace) -> None:
    from pipeline.analysis.accuracy import accuracy_table, write_accuracy

    cfg = config_from_args(args)
    table, predictions, frames = accuracy_table(cfg, dataset=args.dataset, pairs=_pairs(args),
                                                reference_pair=_reference_pair(args, cfg),
                                                generalisation=args.generalisation)
    write_accuracy(table, frames, predictions, csv=args.csv, md=args.md, png=args.png, precision=cfg.analysis.dtype,
                   split=cfg.analysis.accuracy.split, lf_data=cfg.train.lf_data, partition_rule=cfg.md.partition.rule,
                   generalisation_path=args.generalisation or cfg.generalisation.path)


def _add_conservation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "conservation",
        help="energy drift and fluctuation of MD runs from their thermo tables; energy traces",
        description=(
            "Fits a line to the conserved energy of the production rows of each run's thermo CSV (drift in "
            "meV/atom/ps with a blocking standard error, fluctuation in meV/atom, mean temperature), with "
            "precision, ensemble, fixed atoms, target temperature and step time from the run summaries; plots "
            "the traces."
        ),
    )
    _add_config_args(p)
    p.add_argument("--runs", nargs="+", required=True, help="run names, e.g. hf lf moe_independent moe_cotrained")
    p.add_argument("--thermo", nargs="+", required=True, help="input: thermo CSV of each run, in the order of --runs")
    p.add_argument("--summaries", nargs="+", default=None, help="input: summary JSON of each run (optional)")
    _add_table_outputs(p, png="energy traces")
    p.set_defaults(func=_run_conservation)


def _run_conservation(args: argparse.Namespace) -> None:
    from pipeline.analysis.conservation import conservation_table, write_conservation

    cfg = config_from_args(args)
    table, traces = conservation_table(args.runs, args.thermo, args.summaries,
                                       lf_bulk_only=cfg.train.lf_data == "bulk_atoms")
    write_conservation(table, traces, csv=args.csv, md=args.md, png=args.png)


def _add_eos(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eos",
        help="fcc Pt equation of state (Birch-Murnaghan V0, B0, B0') of DFT, each expert and each mixture",
        description=(
            "Fits Birch-Murnaghan E(V) (ase.eos) to the dataset's bulk EOS frames (DFT), to each expert on a "
            "cubic supercell and to each pair's mixture on the same supercell split into HF and LF halves; "
            "adds the WIEN2k PBE reference of ASE's dcdft collection; table and plot."
        ),
    )
    _add_config_args(p)
    p.add_argument("--dataset", default=None, help="input: dataset of the ingest stage, extxyz (for the DFT row)")
    _add_pair_args(p)
    _add_table_outputs(p, png="E(V) plot")
    p.set_defaults(func=_run_eos)


def _run_eos(args: argparse.Namespace) -> None:
    from pipeline.analysis.eos import eos_table, write_eos

    cfg = config_from_args(args)
    table, points = eos_table(cfg, dataset=args.dataset, pairs=_pairs(args), reference_pair=_reference_pair(args, cfg))
    write_eos(table, points, csv=args.csv, md=args.md, png=args.png, precision=cfg.analysis.dtype,
              lf_data=cfg.train.lf_data)


def _add_elastic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "elastic",
        help="cubic elastic constants C11, C12, C44 of fcc Pt: DFT strain set, experiment, each expert and mixture",
        description=(
            "At each model's own Birch-Murnaghan lattice constant, fits C11, C12, C44 by linear least squares to "
            "the energies of the analysis.eos supercell under three homogeneous strain patterns "
            "(analysis.elastic.strains), the mixtures on the supercell split into HF and LF halves (clamped-ion); "
            "adds the DFT row from --dft-set and the experimental and literature rows; table and plot."
        ),
    )
    _add_config_args(p)
    p.add_argument("--dft-set", default=None,
                   help="input: DFT strain set (python -m pipeline elastic-dft), extxyz; omitted: no DFT row")
    _add_pair_args(p)
    _add_table_outputs(p, png="E(strain) plot")
    p.set_defaults(func=_run_elastic)


def _run_elastic(args: argparse.Namespace) -> None:
    from pipeline.analysis.elastic import elastic_table, write_elastic

    cfg = config_from_args(args)
    table, sets = elastic_table(cfg, dft_set=args.dft_set, pairs=_pairs(args), reference_pair=_reference_pair(args, cfg))
    write_elastic(table, sets, csv=args.csv, md=args.md, png=args.png, precision=cfg.analysis.dtype,
                  strains=cfg.analysis.elastic.strains)


def _add_interface(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interface",
        help="spurious HF/LF interface forces in a perfect and a thermal fcc Pt crystal, per pair",
        description=(
            "Splits a cubic fcc Pt supercell into an HF and an LF half and computes, for each pair, the "
            "interface force F(mixture) - F(own expert alone) on the atoms near the interface (max, RMS) in "
            "the perfect crystal and in Gaussian-displaced thermal snapshots; table and per-layer profile."
        ),
    )
    _add_config_args(p)
    _add_pair_args(p, reference=False)
    _add_table_outputs(p, png="interface force profile")
    p.set_defaults(func=_run_interface)


def _run_interface(args: argparse.Namespace) -> None:
    from pipeline.analysis.interface import interface_table, write_interface

    table, profile = interface_table(config_from_args(args), pairs=_pairs(args))
    write_interface(table, profile, csv=args.csv, md=args.md, png=args.png)


def _add_speed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed",
        help="MD-step speed of full HF, full LF and the mixture at several HF fractions and sizes",
        description=(
            "Times energy + forces through the MD stage's mixture evaluator on Pt(111)+CO slabs of "
            "analysis.speed.n_atoms atoms, for full HF, full LF and the mixture at analysis.speed.hf_fractions "
            "(median of repeats after warm-up, one process), with the ideal speedup bound from the measured "
            "per-edge costs and the HF edge fraction (and the naive per-atom one); table and plot. Run it alone "
            "on the machine for meaningful numbers."
        ),
    )
    _add_config_args(p)
    p.add_argument("--hf", required=True, help="input: HF expert checkpoint (.pt)")
    p.add_argument("--lf", required=True, help="input: LF expert checkpoint (.pt)")
    _add_table_outputs(p, png="speed plot")
    p.set_defaults(func=_run_speed)


def _run_speed(args: argparse.Namespace) -> None:
    from pipeline.analysis.speed import speed_table, write_speed

    write_speed(speed_table(config_from_args(args), hf=args.hf, lf=args.lf), csv=args.csv, md=args.md, png=args.png)


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="one-page Markdown summary: headline numbers of the analysis tables beside the paper's claims",
        description="Reads the analysis tables (CSV; each optional) and writes the summary page (Markdown).",
    )
    _add_config_args(p)
    for name in ("accuracy", "conservation", "eos", "elastic", "interface", "cotraining", "speed", "robustness"):
        p.add_argument(f"--{name}", default=None, help=f"input: {name} table, CSV")
    p.add_argument("--output", required=True, help="output: summary page, Markdown")
    p.set_defaults(func=_run_summary)


def _run_summary(args: argparse.Namespace) -> None:
    from pipeline.analysis.summary import LINES, write_summary

    cfg = config_from_args(args)
    notes = [(f"DFT data: {', '.join(cfg.data.paths) if cfg.data.source == 'files' else 'labelled by the pipeline'}; "
             f"MD precision {cfg.md.dtype}, analysis precision {cfg.analysis.dtype}, speed precision "
             f"{cfg.analysis.speed.dtype}; full-HF/full-LF references use the {cfg.md.reference_pair} pair.")]
    if cfg.train.lf_data == "bulk_atoms":
        lf_run = ("the full-LF MD run leaves the adsorbates out (md.full_lf_without_adsorbates)"
                  if getattr(cfg.md, "full_lf_without_adsorbates", False) else "the full-LF MD run (with CO) is extrapolation")
        notes.append("The LF experts were trained on bulk Pt atoms only (train.lf_data: bulk_atoms): they have never "
                     f"seen C or O; {lf_run}, and the LF rows of the accuracy table on adsorbate/surface atoms are "
                     "extrapolation.")
    write_summary({name: getattr(args, name) for name in LINES}, args.output, notes=notes)


def _add_robustness_seed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "robustness-seed",
        help="the robustness row of one training seed (co-training cut, B0 match, interface, mixture accuracy)",
        description=(
            "Evaluates the co-trained and the independent pair of one training seed on data none of them "
            "trained or was selected on (test split, perfect fcc supercells) and writes one CSV row "
            "(pipeline.analysis.robustness)."
        ),
    )
    _add_config_args(p)
    p.add_argument("--seed", type=int, required=True, help="the training seed of the checkpoints")
    p.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
    _add_pair_args(p, reference=False)
    p.add_argument("--csv", required=True, help="output: one row, CSV")
    p.set_defaults(func=_run_robustness_seed)


def _run_robustness_seed(args: argparse.Namespace) -> None:
    import pandas as pd

    from pipeline.analysis.robustness import seed_row
    from pipeline.atomic import write_atomic

    row = seed_row(config_from_args(args), seed=args.seed, dataset=args.dataset, pairs=_pairs(args))
    write_atomic(args.csv, lambda tmp: pd.DataFrame([row]).to_csv(tmp, index=False))


def _add_robustness(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "robustness",
        help="the robustness table: one row per training seed, mean and std, criteria met per seed",
        description="Collects the rows of robustness-seed into results/tables/robustness.{csv,md}.",
    )
    _add_config_args(p)
    p.add_argument("--rows", nargs="+", required=True, help="input: the one-row CSVs of robustness-seed")
    _add_table_outputs(p, png=None)
    p.set_defaults(func=_run_robustness)


def _run_robustness(args: argparse.Namespace) -> None:
    import pandas as pd

    from pipeline.analysis.robustness import robustness_table, write_robustness

    cfg = config_from_args(args)
    rows = [row for path in args.rows for row in pd.read_csv(path).to_dict("records")]
    write_robustness(robustness_table(rows), csv=args.csv, md=args.md, precision=cfg.analysis.dtype)


def _add_learning_curves(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "learning-curves",
        help="learning curves of the training stages of one seed (loss terms, validation MAE) and a stage table",
        description=(
            "Plots, per training stage (HF alone, each pair's LF or joint pair), the training and validation "
            "loss terms and the validation MAE of each expert against the epoch, with the selected epoch; "
            "writes a table of the selected epoch, epochs run, time per epoch and validation figures."
        ),
    )
    _add_config_args(p)
    p.add_argument("--stages", nargs="+", required=True, help="stage labels (e.g. hf lf_cotrained lf_independent)")
    p.add_argument("--metrics", nargs="+", required=True, help="input: metrics CSV of each stage, same order")
    _add_table_outputs(p, png="learning curves")
    p.set_defaults(func=_run_learning_curves)


def _run_learning_curves(args: argparse.Namespace) -> None:
    from pipeline.analysis.learning import learning_table, write_learning

    if len(args.stages) != len(args.metrics):
        raise ConfigError(f"need one --metrics CSV per stage: {len(args.stages)} stages, {len(args.metrics)} CSVs")
    metrics = dict(zip(args.stages, args.metrics))
    write_learning(learning_table(metrics), metrics, csv=args.csv, md=args.md, png=args.png)


# ---------------------------------------------------------------------------------------------
# moe study: moe-emt-sample / moe-emt-dataset / moe-study-train / moe-study-report
# ---------------------------------------------------------------------------------------------


def _add_moe_emt_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "moe-emt-sample",
        help="sample the multi-element EMT set of the MoE study (bulk alloys, surfaces, rattled cells)",
        description="Builds the structures of moe_study.emt (deterministic for the seed), unlabelled, for the "
                    "label stage with label.calculator: emt (NOT DFT).",
    )
    _add_config_args(p)
    p.add_argument("--output", required=True, help="output: unlabelled structures, extxyz")
    p.set_defaults(func=_run_moe_emt_sample)


def _run_moe_emt_sample(args: argparse.Namespace) -> None:
    from pipeline.data.alloys import write_alloys

    cfg = config_from_args(args)
    write_alloys(cfg.moe_study.emt, cfg.seed, args.output)


def _add_moe_emt_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "moe-emt-dataset",
        help="EMT-labelled frames -> the MoE study's multi-element dataset (regions, splits)",
        description="Checks every frame is marked not-DFT, labels all atoms bulk and assigns deterministic "
                    "train/validation/test splits (moe_study.emt fractions).",
    )
    _add_config_args(p)
    p.add_argument("--labelled", required=True, help="input: EMT-labelled frames, extxyz")
    p.add_argument("--dataset", required=True, help="output: dataset, extxyz")
    p.set_defaults(func=_run_moe_emt_dataset)


def _run_moe_emt_dataset(args: argparse.Namespace) -> None:
    from pipeline.data.alloys import emt_dataset

    cfg = config_from_args(args)
    emt_dataset(cfg.moe_study.emt, cfg.seed, args.labelled, args.dataset)


def _add_moe_study_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "moe-study-train",
        help="train one variant (dense, MoE, MoLE) of the MoE routing study on one dataset",
        description="Trains the variant with the moe_study budget, evaluates the test split and writes the "
                    "checkpoint, per-epoch metrics (with expert load per element and layer) and a JSON summary.",
    )
    _add_config_args(p)
    p.add_argument("--dataset", required=True, help="input: dataset with splits and regions, extxyz")
    p.add_argument("--dataset-name", required=True, choices=("pt_co", "emt_alloys"), help="which study dataset")
    p.add_argument("--variant", required=True, help="variant name (pipeline.train.moe_study.VARIANTS)")
    p.add_argument("--checkpoint", required=True, help="output: model checkpoint (.pt)")
    p.add_argument("--metrics", required=True, help="output: per-epoch metrics, CSV")
    p.add_argument("--summary", required=True, help="output: test errors, parameters, routing, JSON")
    p.set_defaults(func=_run_moe_study_train)


def _run_moe_study_train(args: argparse.Namespace) -> None:
    from pipeline.train.moe_study import train_variant

    train_variant(config_from_args(args), dataset=args.dataset, dataset_name=args.dataset_name,
                  variant=args.variant, checkpoint=args.checkpoint, metrics=args.metrics, summary=args.summary)


def _add_moe_study_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "moe-study-report",
        help="table and figures of the MoE routing study",
        description="Table of test MAE, active/total parameters and stability per dataset and variant (CSV, "
                    "Markdown), heat map of expert usage per element and layer, PCA of per-element routing.",
    )
    p.add_argument("--summaries", nargs="+", required=True, help="input: summaries of moe-study-train, JSON")
    p.add_argument("--csv", required=True, help="output: table, CSV")
    p.add_argument("--md", required=True, help="output: table and notes, Markdown")
    p.add_argument("--heatmap", required=True, help="output: expert usage heat map, PNG")
    p.add_argument("--pca", required=True, help="output: routing PCA, PNG")
    p.set_defaults(func=_run_moe_study_report)


def _run_moe_study_report(args: argparse.Namespace) -> None:
    from pipeline.train.moe_report import read_summaries, write_report

    write_report(read_summaries(args.summaries), csv=args.csv, md=args.md, heatmap=args.heatmap, pca=args.pca)


# ---------------------------------------------------------------------------------------------
# active learning (pipeline.active; workflow/rules/active.smk)
# ---------------------------------------------------------------------------------------------


def _add_al_explore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "al-explore",
        help="active learning: short Langevin MD of the mixture and full HF in one small cell; snapshots",
        description=(
            "Runs one trajectory per potential of active.explore.runs (mixture: HF on the md.partition HF atoms, "
            "LF elsewhere; hf: HF everywhere) and per temperature of active.explore.temperatures_k in the cell "
            "--cell; snapshots every active.explore.snapshot_interval steps with their provenance; a trajectory "
            "that turns unphysical is stopped, its last good state kept and the reason recorded."
        ),
    )
    _add_config_args(p)
    p.add_argument("--cell", required=True, help="exploration cell (a name of pipeline.active.cells.CELLS)")
    p.add_argument("--iteration", type=int, required=True, help="loop iteration (provenance, random streams)")
    p.add_argument("--hf", required=True, help="input: HF checkpoint (.pt) of the first committee seed")
    p.add_argument("--lf", default=None, help="input: LF checkpoint (.pt) of the mixture (needed by the mixture run)")
    p.add_argument("--frames", required=True, help="output: unlabelled snapshots, extxyz")
    p.add_argument("--trajectories", required=True, help="output: one row per trajectory, CSV")
    p.set_defaults(func=_run_al_explore)


def _run_al_explore(args: argparse.Namespace) -> None:
    from pipeline.active.stages import explore_stage

    explore_stage(config_from_args(args), args.cell, iteration=args.iteration, hf=args.hf, lf=args.lf,
                  frames=args.frames, trajectories=args.trajectories)


def _add_al_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "al-score",
        help="active learning: score snapshots by the HF committee's max per-atom force spread",
        description=(
            "Evaluates every snapshot with every committee member; writes the frames with info al_score (eV/A), "
            "the score table and the per-element mean invariant descriptors of the first member (NPZ)."
        ),
    )
    _add_config_args(p)
    p.add_argument("--frames", nargs="+", required=True, help="input: snapshot files of al-explore, extxyz")
    p.add_argument("--committee", nargs="+", required=True, help="input: HF checkpoints (.pt), one per seed (>= 2)")
    p.add_argument("--scored", required=True, help="output: scored frames, extxyz")
    p.add_argument("--scores", required=True, help="output: score table, CSV")
    p.add_argument("--descriptors", required=True, help="output: frame descriptors, NPZ")
    p.set_defaults(func=_run_al_score)


def _run_al_score(args: argparse.Namespace) -> None:
    from pipeline.active.stages import score_stage

    score_stage(config_from_args(args), args.frames, args.committee, scored=args.scored, scores=args.scores,
                descriptors=args.descriptors)


def _add_al_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "al-select",
        help="active learning: pick diverse high-uncertainty frames; write labelling chunks",
        description=(
            "Candidates: the top active.select.top_fraction of the scores (and >= min_score_ev_a); then "
            "farthest-point sampling of at most max_frames in the standardised descriptor space, from the "
            "highest score (ties broken by active.seed). Writes DIRECTORY/chunk_NNN.extxyz (chunk_size frames "
            "each, at least one file) and DIRECTORY/selected.csv."
        ),
    )
    _add_config_args(p)
    p.add_argument("--scored", required=True, help="input: scored frames of al-score, extxyz")
    p.add_argument("--scores", required=True, help="input: score table of al-score, CSV")
    p.add_argument("--descriptors", required=True, help="input: descriptors of al-score, NPZ")
    p.add_argument("--directory", required=True, help="output: directory of the labelling chunks")
    p.set_defaults(func=_run_al_select)


def _run_al_select(args: argparse.Namespace) -> None:
    from pipeline.active.stages import select_stage

    select_stage(config_from_args(args), scored=args.scored, scores=args.scores, descriptors=args.descriptors,
                 directory=args.directory)


def _add_al_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "al-report",
        help="active learning: one iteration's row (counts, scores, calibration, test MAE, labelling time)",
        description=(
            "Scores the test split of the iteration's dataset and the frames labelled in the iteration with the "
            "committee: calibration (Spearman, binned means, PNG) of the score against the committee mean's "
            "force error, HF test MAE, and the iteration's counts and labelling CPU time (row as JSON)."
        ),
    )
    _add_config_args(p)
    p.add_argument("--iteration", type=int, required=True, help="loop iteration")
    p.add_argument("--dataset", required=True, help="input: the dataset the iteration trained on (ingest output)")
    p.add_argument("--committee", nargs="+", required=True, help="input: the iteration's HF checkpoints (.pt)")
    p.add_argument("--trajectories", nargs="+", required=True, help="input: trajectories CSVs of al-explore")
    p.add_argument("--scores", required=True, help="input: score table of al-score, CSV")
    p.add_argument("--selected", required=True, help="input: selected.csv of al-select")
    p.add_argument("--labelled", required=True, help="input: the iteration's merged labelled frames, extxyz")
    p.add_argument("--failures", required=True, help="input: the iteration's merged labelling failures, CSV")
    p.add_argument("--row", required=True, help="output: the iteration's row, JSON")
    p.add_argument("--calibration-csv", required=True, help="output: calibration table, CSV")
    p.add_argument("--calibration-png", required=True, help="output: calibration plot, PNG")
    p.set_defaults(func=_run_al_report)


def _run_al_report(args: argparse.Namespace) -> None:
    from pipeline.active.report import write_iteration_report

    write_iteration_report(config_from_args(args), row_json=args.row, calibration_csv=args.calibration_csv,
                           calibration_png=args.calibration_png, iteration=args.iteration, dataset=args.dataset,
                           committee=args.committee, trajectories=args.trajectories, scores=args.scores,
                           selected=args.selected, labelled=args.labelled, failures=args.failures)


def _add_al_table(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "al-table",
        help="active learning: the per-iteration table (CSV + Markdown) from the rows of al-report",
        description="Combines the per-iteration rows (JSON) into one table sorted by iteration.",
    )
    p.add_argument("--rows", nargs="+", required=True, help="input: rows of al-report, JSON")
    p.add_argument("--csv", required=True, help="output: table, CSV")
    p.add_argument("--md", required=True, help="output: table, Markdown")
    p.set_defaults(func=_run_al_table)


def _run_al_table(args: argparse.Namespace) -> None:
    from pipeline.active.report import write_iteration_table

    print(write_iteration_table(args.rows, csv=args.csv, md=args.md).to_string(index=False))


def _add_al_ship(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "al-ship",
        help="active learning: write the grown labelled set (base + added frames) with a generated README",
        description=(
            "Writes DEST/NAME (the base frames, then the frames the loop added), DEST/failures_active.csv (if "
            "any), DEST/sanity.{csv,md} and DEST/README.md (settings, counts, CPU time, sanity table, the "
            "active-learning provenance and the per-iteration table). The only way the loop's frames reach "
            "resources/ (e.g. --dest resources/dft)."
        ),
    )
    _add_config_args(p)
    p.add_argument("--base", nargs="+", required=True, help="input: the base labelled set(s), extxyz")
    p.add_argument("--added", nargs="*", default=[], help="input: merged labelled frames of each iteration, extxyz")
    p.add_argument("--failures", nargs="*", default=[], help="input: labelling failures of each iteration, CSV")
    p.add_argument("--table-md", default=None, help="input: per-iteration table of al-table, Markdown")
    p.add_argument("--dest", required=True, help="output directory")
    p.add_argument("--name", default="pt_co_gpaw.extxyz", help="file name of the grown set in DEST")
    p.set_defaults(func=_run_al_ship)


def _run_al_ship(args: argparse.Namespace) -> None:
    import shlex

    from pipeline.active.ship import ship_grown_set

    cfg = config_from_args(args)
    argv = sys.argv[1:]
    kept = [a for i, a in enumerate(argv) if a != "--config-json" and (i == 0 or argv[i - 1] != "--config-json")]
    command = "python -m pipeline " + shlex.join(kept)
    frames = ship_grown_set(args.base, args.added, args.failures, args.dest, name=args.name, table_md=args.table_md,
                            command=command, label_cfg=cfg.label)
    print(f"wrote {len(frames)} frames to {args.dest}/{args.name}")


# ---------------------------------------------------------------------------------------------
# generalisation set: sample-generalisation / ship-generalisation / data-learning-curve
# ---------------------------------------------------------------------------------------------


def _add_sample_generalisation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample-generalisation",
        help="build the generalisation structures (outside every training family) into chunk files",
        description=(
            "Builds the structures of the generalisation: section (pipeline.data.generalisation: thicker slabs, "
            "other CO sites and coverages, adatom, vacancy, step, bulk vacancy; each ideal and rattled; "
            "deterministic for generalisation.seed) and splits them into generalisation.n_chunks extxyz files of "
            "similar estimated DFT cost, for the label stage."
        ),
    )
    _add_config_args(p)
    p.add_argument("--chunks", nargs="+", required=True,
                   help="output: one extxyz file per chunk (exactly generalisation.n_chunks paths)")
    p.set_defaults(func=_run_sample_generalisation)


def _run_sample_generalisation(args: argparse.Namespace) -> None:
    from pipeline.data.generalisation import write_generalisation_chunks

    write_generalisation_chunks(config_from_args(args), args.chunks)


def _add_ship_generalisation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ship-generalisation",
        help="copy the labelled generalisation set into DEST with a README (frame list, settings, CPU time)",
        description=(
            "Copies the merged labelled generalisation frames to DEST/generalisation.extxyz and writes "
            "DEST/generalisation_README.md: how the set was made, the command, the DFT settings (compared with "
            "--reference, the training set), every frame with kind, size, k mesh and CPU time, and the failures."
        ),
    )
    _add_config_args(p)
    p.add_argument("--labelled", required=True, help="input: merged labelled frames, extxyz")
    p.add_argument("--failures", required=True, help="input: merged failures, CSV")
    p.add_argument("--structures", nargs="+", required=True, help="input: the unlabelled chunk files, extxyz")
    p.add_argument("--reference", default=None, help="input: the training set whose DFT settings must match, extxyz")
    p.add_argument("--dest", default=None, help="output directory (default: generalisation.dest, e.g. resources/dft)")
    p.add_argument("--receipt", default=None, help="output: the frame list, CSV (the rule's declared output)")
    p.add_argument("--command", default=None, help="the command that produced the set (README)")
    p.set_defaults(func=_run_ship_generalisation)


def _run_ship_generalisation(args: argparse.Namespace) -> None:
    from pipeline.atomic import write_atomic
    from pipeline.data.generalisation_set import ship_generalisation

    cfg = config_from_args(args)
    command = args.command or "snakemake --cores 1 generalisation"
    table = ship_generalisation(args.labelled, args.failures, args.structures, args.dest or cfg.generalisation.dest,
                                label_cfg=cfg.label, command=command, reference=args.reference,
                                generalisation_cfg=cfg.generalisation)
    if args.receipt:
        write_atomic(args.receipt, lambda tmp: table.to_csv(tmp, index=False))
    print(table.to_string(index=False))


def _add_data_learning_curve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data-learning-curve",
        help="HF test and generalisation errors against the number of training frames (table + log-log plot)",
        description=(
            "Evaluates the HF experts trained on fractions of the training frames (train --train-fraction) on the "
            "near-equilibrium frames of the test split and of the shipped generalisation set: energy and force "
            "MAE per fraction, log-log slopes; CSV, Markdown and PNG."
        ),
    )
    _add_config_args(p)
    p.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
    p.add_argument("--fractions", nargs="+", type=float, required=True, help="training fraction of each checkpoint")
    p.add_argument("--hf", nargs="+", required=True, help="input: HF checkpoints, in the order of --fractions")
    p.add_argument("--seed", type=int, default=None, help="training seed of the checkpoints (notes; default: seed)")
    p.add_argument("--generalisation", default=None, help="input: the shipped generalisation set, extxyz")
    _add_table_outputs(p, png="log-log learning curve")
    p.set_defaults(func=_run_data_learning_curve)


def _run_data_learning_curve(args: argparse.Namespace) -> None:
    from pipeline.analysis.data_curve import data_curve_table, write_data_curve

    cfg = config_from_args(args)
    table = data_curve_table(cfg, dataset=args.dataset, fractions=args.fractions, checkpoints=args.hf,
                             generalisation=args.generalisation)
    write_data_curve(table, csv=args.csv, md=args.md, png=args.png, precision=cfg.analysis.dtype,
                     seed=cfg.seed if args.seed is None else args.seed,
                     subset_seed=cfg.generalisation.learning_curve.subset_seed, generalisation=args.generalisation)


# ---------------------------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_ingest,
    _add_sample,
    _add_label,
    _add_merge_labels,
    _add_dft_sanity,
    _add_ship_dft,
    _add_elastic_dft,
    _add_label_convergence,
    _add_train,
    _add_cotraining_table,
    _add_md_system,
    _add_md,
    _add_accuracy,
    _add_conservation,
    _add_eos,
    _add_elastic,
    _add_interface,
    _add_speed,
    _add_summary,
    _add_robustness_seed,
    _add_robustness,
    _add_learning_curves,
    _add_moe_emt_sample,
    _add_moe_emt_dataset,
    _add_moe_study_train,
    _add_moe_study_report,
    _add_sample_generalisation,
    _add_ship_generalisation,
    _add_data_learning_curve,
    _add_al_explore,
    _add_al_score,
    _add_al_select,
    _add_al_report,
    _add_al_table,
    _add_al_ship,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-mlip",
        description="Multi-fidelity mixture-of-experts Allegro potentials: one subcommand per pipeline stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"moe-mlip {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineInputError as exc:
        print(f"moe-mlip {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
