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


# ---------------------------------------------------------------------------------------------
# train / cotraining-table
# ---------------------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="co-train (or independently train) the HF and LF experts; resumable, DDP under torchrun",
        description=(
            "Trains one expert pair on the dataset of the ingest stage: 'cotrained' with the agreement "
            "terms of the train: section on bulk atoms, 'independent' with lambda = 0 (same seed, data "
            "order and budget). Writes the best EMA weights of each expert, the per-epoch metrics, and a "
            "training state after every epoch in --state-dir, from which a rerun resumes (a corrupt or "
            "foreign state is an error, never a silent restart). Launch with torchrun "
            "(torchrun --standalone --nproc_per_node=N -m pipeline train ...) for data-parallel training."
        ),
    )
    _add_config_args(p)
    p.add_argument("--pair", required=True, choices=("cotrained", "independent"), help="which pair to train")
    p.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
    p.add_argument("--hf", required=True, help="output: HF expert checkpoint (.pt)")
    p.add_argument("--lf", required=True, help="output: LF expert checkpoint (.pt)")
    p.add_argument("--metrics", required=True, help="output: per-epoch metrics, CSV")
    p.add_argument("--state-dir", required=True, help="directory of the training state (resumed from if present)")
    p.add_argument("--keep-state", action="store_true", help="keep the training state after a successful run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from pipeline.train import run_training

    run_training(config_from_args(args), pair=args.pair, dataset=args.dataset, hf_path=args.hf,
                 lf_path=args.lf, metrics_path=args.metrics, state_dir=args.state_dir,
                 progress=not args.no_progress, keep_state=args.keep_state)


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
            "on every atom. Ensemble, timestep, steps and intervals from md.run; blow-up limits from "
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

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_ingest,
    _add_sample,
    _add_label,
    _add_merge_labels,
    _add_dft_sanity,
    _add_ship_dft,
    _add_train,
    _add_cotraining_table,
    _add_md_system,
    _add_md,
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
