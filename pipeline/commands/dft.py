"""Checking and shipping the DFT-labelled sets: ``dft-sanity``, ``ship-dft``, ``elastic-dft``,
``label-convergence``."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands._common import Command, add_config_args, config_from_args


class DftSanity(Command):
    name = "dft-sanity"
    short_description = "sanity table of a labelled set: bulk Pt EOS vs the PBE reference, CO adsorption energies"
    description = (
        "Fits a Birch-Murnaghan EOS to the bulk EOS frames (V0, B0, B0') beside ASE's dcdft "
        "WIEN2k PBE reference, and computes CO adsorption energies on top and fcc sites from the "
        "ideal geometries; writes CSV and Markdown, and optionally the README of the shipped set."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labelled", required=True, help="input: labelled frames, extxyz")
        parser.add_argument("--failures", default=None, help="input: failures CSV (for the README)")
        parser.add_argument("--csv", required=True, help="output: sanity table, CSV")
        parser.add_argument("--md", required=True, help="output: sanity table, Markdown")
        parser.add_argument("--readme", default=None, help="output: README of the labelled set, Markdown")
        parser.add_argument("--command", default=None, help="the command that produced the set (for the README)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.sanity import write_sanity

        write_sanity(args.labelled, csv=args.csv, md=args.md, readme=args.readme, failures=args.failures,
                     command=args.command)


class ShipDft(Command):
    name = "ship-dft"
    short_description = "copy a labelled set into resources/ with its failures, sanity table and README"
    description = (
        "Copies the merged labelled set to DEST/pt_co_gpaw.extxyz (and DEST/failures.csv when any "
        "structure failed) and writes DEST/sanity.csv, DEST/sanity.md and DEST/README.md (command, "
        "settings, counts per family and config type, failures, total CPU time, sanity table)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labelled", required=True, help="input: merged labelled frames, extxyz")
        parser.add_argument("--failures", required=True, help="input: merged failures, CSV")
        parser.add_argument("--dest", required=True, help="output directory, e.g. resources/dft")
        parser.add_argument("--name", default="pt_co_gpaw.extxyz", help="file name of the shipped set in DEST")
        add_config_args(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.sanity import ship_labelled_set

        cfg = config_from_args(args)
        ship_labelled_set(args.labelled, args.failures, args.dest, name=args.name, label_cfg=cfg.label)


class ElasticDft(Command):
    name = "elastic-dft"
    short_description = "label the DFT strain set of the elastic constants (1-atom fcc Pt, fixed k meshes); resumable"
    description = (
        "For each n of --kpts (a fixed n x n x n mesh; the last is shipped, the others are the k-point "
        "convergence check): labels a volume series around --lattice-constant with the label: settings, "
        "fits V0, labels the strain patterns of analysis.elastic.strains at V0, caching every structure "
        "in --cache-dir; writes DEST/pt_elastic_gpaw.extxyz, the coarser meshes' frames, "
        "DEST/kpoint_convergence.csv and DEST/README.md."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--kpts", nargs="+", type=int, required=True, help="k meshes n (n x n x n), ascending")
        parser.add_argument("--lattice-constant", type=float, default=None,
                            help="centre of the volume series, A (default: sample.lattice_constant_a)")
        parser.add_argument("--h-a", type=float, default=None,
                            help="real-space grid spacing, A (default: label.h_a; see the README of the shipped set)")
        parser.add_argument("--grid-check-h", nargs="*", type=float, default=[],
                            help="further grid spacings (A) for the symmetry check of the real-space grid (GPAW only)")
        parser.add_argument("--cache-dir", required=True, help="directory of the per-structure result cache")
        parser.add_argument("--log-dir", required=True, help="directory of the per-structure calculator logs")
        parser.add_argument("--dest", required=True, help="output directory, e.g. resources/dft/elastic")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import shlex

        from pipeline.analysis.elastic_dft import ship_elastic_set

        cfg = config_from_args(args)
        conv = ship_elastic_set(cfg.label, args.kpts,
                                lattice_constant_a=args.lattice_constant or cfg.sample.lattice_constant_a,
                                strains=cfg.analysis.elastic.strains, cache_dir=args.cache_dir, log_dir=args.log_dir,
                                dest=args.dest, command="python -m pipeline " + shlex.join(sys.argv[1:]), h_a=args.h_a,
                                grid_check_h=args.grid_check_h)
        print(conv.to_string(index=False))


class LabelConvergence(Command):
    name = "label-convergence"
    short_description = "convergence study of the DFT labelling settings on representative frames; resumable"
    description = (
        "Evaluates the frames label_convergence.frames of --labelled with a ladder of GPAW settings that "
        "varies one parameter at a time (k-point density, grid spacing, smearing, LCAO basis) from "
        "label_convergence.base, and with the current label: settings; proposes the cheapest setting within "
        "the tolerances, evaluates it, and writes tables (CSV + Markdown), the CO adsorption energies, the "
        "labelled units and a README into --dest. Every (frame, setting) is cached in --cache-dir."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--labelled", default="resources/dft/pt_co_gpaw.extxyz",
                            help="input: labelled frames, extxyz (default: %(default)s)")
        parser.add_argument("--cache-dir", required=True, help="directory of the per-unit result cache")
        parser.add_argument("--log-dir", required=True, help="directory of the per-unit calculator logs")
        parser.add_argument("--dest", required=True, help="output directory, e.g. resources/dft/convergence")
        parser.add_argument("--plan", action="store_true",
                            help="list the units (frame, setting, k mesh, cached or not) and stop; computes nothing")
        parser.add_argument("--cached-only", action="store_true",
                            help="compute nothing: write the tables from what the cache holds (units not computed are "
                                 "listed as pending; rerun without this flag to resume)")
        parser.add_argument("--resume-from", default=None, metavar="DIR",
                            help="a shipped study folder (e.g. resources/dft/convergence): its units seed --cache-dir "
                                 "first when their geometry and recorded settings match, so only missing units are "
                                 "computed")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import shlex

        from pipeline.data import convergence as conv

        cfg = config_from_args(args)
        if args.plan:
            plan = conv.plan(args.labelled, cfg.label, cfg.label_convergence, cache_dir=args.cache_dir)
            print(plan.to_string(index=False))
            return
        result = conv.run_study(args.labelled, cfg.label, cfg.label_convergence, cache_dir=args.cache_dir,
                                log_dir=args.log_dir, progress=not args.no_progress, cached_only=args.cached_only,
                                resume_from=args.resume_from)
        conv.ship_study(result, cfg.label_convergence, cfg.label, dest=args.dest, labelled=args.labelled,
                        command="python -m pipeline " + shlex.join(a for a in sys.argv[1:] if a != "--cached-only"))
        print(result.table.to_string(index=False))
