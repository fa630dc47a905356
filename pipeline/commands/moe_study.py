"""The MoE routing study: ``moe-emt-sample``, ``moe-emt-dataset``, the periodic-table set (``moe-periodic-sample``,
``moe-periodic-dataset``, ``moe-periodic-ship``, ``moe-periodic-check-sample``, ``moe-periodic-check-table``),
``moe-study-train``, ``moe-study-report``, ``moe-hf-report`` (workflow/rules/moe_study.smk)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import Command, add_config_args, config_from_args


class MoeEmtSample(Command):
    name = "moe-emt-sample"
    short_description = "sample the multi-element EMT set of the MoE study (bulk alloys, surfaces, rattled cells)"
    description = (
        "Builds the structures of moe_study.emt (deterministic for the seed), unlabelled, for the "
        "label stage with label.calculator: emt (NOT DFT)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--output", required=True, help="output: unlabelled structures, extxyz")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.alloys import write_alloys

        cfg = config_from_args(args)
        write_alloys(cfg.moe_study.emt, cfg.seed, args.output)


class MoeEmtDataset(Command):
    name = "moe-emt-dataset"
    short_description = "EMT-labelled frames -> the MoE study's multi-element dataset (regions, splits)"
    description = (
        "Checks every frame is marked not-DFT, labels all atoms bulk and assigns deterministic "
        "train/validation/test splits (moe_study.emt fractions)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--labelled", required=True, help="input: EMT-labelled frames, extxyz")
        parser.add_argument("--dataset", required=True, help="output: dataset, extxyz")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.alloys import emt_dataset

        cfg = config_from_args(args)
        emt_dataset(cfg.moe_study.emt, cfg.seed, args.labelled, args.dataset)


class MoePeriodicSample(Command):
    name = "moe-periodic-sample"
    short_description = "sample the periodic-table set of the MoE study (bulk, alloys, compounds, surfaces)"
    description = (
        "Builds the structures of moe_study.periodic (deterministic for its seed), unlabelled, for the label "
        "stage with label.calculator: sevenn (the SevenNet-0 teacher, NOT DFT)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--output", required=True, help="output: unlabelled structures, extxyz")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.periodic_set import write_periodic

        write_periodic(config_from_args(args).moe_study.periodic, args.output)


class MoePeriodicDataset(Command):
    name = "moe-periodic-dataset"
    short_description = "teacher-labelled periodic-table frames -> the MoE study's dataset (regions, splits)"
    description = (
        "Checks every frame is marked label_level=teacher (not DFT), labels all atoms bulk and assigns "
        "deterministic train/validation/test splits by group (moe_study.periodic fractions and seed)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--labelled", required=True, help="input: teacher-labelled frames, extxyz")
        parser.add_argument("--dataset", required=True, help="output: dataset, extxyz")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.periodic_ship import periodic_dataset

        periodic_dataset(config_from_args(args).moe_study.periodic, args.labelled, args.dataset)


class MoePeriodicShip(Command):
    name = "moe-periodic-ship"
    short_description = "ship the teacher-labelled periodic-table set to moe_study.periodic.path with a README"
    description = (
        "Copies the labelled frames to moe_study.periodic.path and writes README.md beside it (how the set was "
        "made, the command, counts per family and element, the teacher and its licence); refuses sets over 20 MB."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--labelled", required=True, help="input: teacher-labelled frames, extxyz")
        parser.add_argument("--receipt", required=True, help="output: frames per family of the shipped set, CSV")
        parser.add_argument("--command", default=None, help="the command that produced the set (README)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.atomic import write_atomic
        from pipeline.data.periodic_ship import family_counts, read_frames, ship_periodic

        cfg = config_from_args(args)
        command = args.command or "snakemake --cores 1 moe_periodic_ship --configfile config/moe_study.yaml"
        dest = ship_periodic(args.labelled, cfg=cfg.moe_study.periodic, command=command)
        counts = family_counts(read_frames(dest))
        write_atomic(args.receipt, lambda tmp: counts.to_csv(tmp, index=False))


class MoePeriodicCheckSample(Command):
    name = "moe-periodic-check-sample"
    short_description = "draw the seeded subset of the periodic-table set that GPAW relabels (teacher check)"
    description = (
        "Selects moe_study.periodic.teacher_check.n_frames small frames from every family in proportion; writes "
        "them with their teacher labels, and unlabelled in chunk files for the label stage (GPAW)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--labelled", required=True, help="input: teacher-labelled frames, extxyz")
        parser.add_argument("--subset", required=True, help="output: the drawn frames with teacher labels, extxyz")
        parser.add_argument("--chunks", nargs="+", required=True, help="output: unlabelled chunk files, extxyz")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.teacher_check import write_check_subset

        write_check_subset(args.labelled, config_from_args(args).moe_study.periodic, args.subset, args.chunks)


class MoePeriodicCheckShip(Command):
    name = "moe-periodic-check-ship"
    short_description = "ship the GPAW labels of the teacher check done so far (resources/) with a README"
    description = (
        "Writes the check frames that the label cache holds (GPAW PBE) to moe_study.periodic.teacher_check.path "
        "and a README beside it; works on a check that is still running or was stopped, and the check's label jobs "
        "take these labels back instead of computing them."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--chunks", nargs="+", required=True, help="input: the check's unlabelled chunk files")
        parser.add_argument("--cache-dir", required=True, help="input: the check's per-structure label cache")
        parser.add_argument("--receipt", required=True, help="output: frames drawn and labelled per family, CSV")
        parser.add_argument("--command", default=None, help="the command that produced the labels (README)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.atomic import write_atomic
        from pipeline.data.teacher_check import ship_check_labels

        command = args.command or ("snakemake moe_periodic_check --cores 2 --configfile config/moe_study.yaml  "
                                   "# stop it whenever: the cache keeps every finished frame\n"
                                   "snakemake moe_periodic_check_ship --forcerun moe_periodic_check_ship --cores 1 "
                                   "--configfile config/moe_study.yaml")
        counts = ship_check_labels(args.chunks, config_from_args(args), args.cache_dir, command=command)
        write_atomic(args.receipt, lambda tmp: counts.to_csv(tmp, index=False))


class MoePeriodicCheckTable(Command):
    name = "moe-periodic-check-table"
    short_description = "teacher vs GPAW PBE errors on the check subset (per element family, aligned energies)"
    description = (
        "Force MAE/RMS (meV/A) per element family, structure family and overall, and energy MAE (meV/atom) after "
        "removing a least-squares per-element constant, as CSV and Markdown."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--teacher", required=True, help="input: the subset with teacher labels, extxyz")
        parser.add_argument("--dft", required=True, help="input: the subset labelled by GPAW, extxyz")
        parser.add_argument("--failures", required=True, help="input: GPAW failures, CSV")
        parser.add_argument("--csv", required=True, help="output: table, CSV")
        parser.add_argument("--md", required=True, help="output: table, constants and notes, Markdown")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.teacher_check import check_label_config, write_check

        cfg = config_from_args(args)
        write_check(args.teacher, args.dft, args.failures, csv=args.csv, md=args.md, label_cfg=check_label_config(cfg))


class MoeStudyTrain(Command):
    name = "moe-study-train"
    short_description = "train one variant (dense, MoE, MoLE) of the MoE routing study on one dataset with one seed"
    description = (
        "Trains the variant with the moe_study budget at the dense model's active parameter count (solved expert "
        "width), resumably with --state; evaluates the test split and the stability measures and writes the "
        "checkpoint, per-epoch metrics (the learning curve, with expert load per element and layer, loss spikes "
        "and non-finite gradients) and a JSON summary."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--dataset", required=True, help="input: dataset with splits and regions, extxyz")
        parser.add_argument("--dataset-name", required=True, choices=("pt_co", "emt_alloys", "periodic"),
                            help="which study dataset")
        parser.add_argument("--variant", required=True, help="variant name (pipeline.train.moe_study.VARIANTS)")
        parser.add_argument("--base-model", choices=("hf", "lf"), default=None,
                            help="expert preset every variant starts from (default: moe_study.base_model)")
        parser.add_argument("--seed", type=int, default=None,
                            help="training seed: initial weights and batch order (default: the top-level seed)")
        parser.add_argument("--state", default=None,
                            help="training state file: written after every epoch, resumed from when it exists")
        parser.add_argument("--checkpoint", required=True, help="output: model checkpoint (.pt)")
        parser.add_argument("--metrics", required=True, help="output: per-epoch metrics, CSV")
        parser.add_argument("--summary", required=True, help="output: test errors, parameters, routing, JSON")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import dataclasses

        from pipeline.train.moe_study import train_variant

        cfg = config_from_args(args)
        if args.base_model is not None:
            cfg = dataclasses.replace(cfg, moe_study=dataclasses.replace(cfg.moe_study, base_model=args.base_model))
        train_variant(cfg, dataset=args.dataset, dataset_name=args.dataset_name,
                      variant=args.variant, checkpoint=args.checkpoint, metrics=args.metrics, summary=args.summary,
                      seed=args.seed, state=args.state)


class MoeStudyReport(Command):
    name = "moe-study-report"
    short_description = "table, claims and figures of the MoE routing study"
    description = (
        "Table of test MAE, active/total parameters and stability per dataset, variant and seed with mean and "
        "std rows (CSV, Markdown with the paper's claims judged from it), routing analysis (k-NN agreement of "
        "per-element routing with periodic-table labels, permutation p-values; CSV, Markdown), heat map of "
        "routing per element and layer, PCA of per-element routing, learning curves."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--summaries", nargs="+", required=True, help="input: summaries of moe-study-train, JSON")
        parser.add_argument("--csv", required=True, help="output: table, CSV")
        parser.add_argument("--md", required=True, help="output: table, claims and notes, Markdown")
        parser.add_argument("--heatmap", required=True, help="output: routing heat map, PNG")
        parser.add_argument("--pca", required=True, help="output: routing PCA, PNG")
        parser.add_argument("--routing-csv", default=None, help="output: routing analysis table, CSV")
        parser.add_argument("--routing-md", default=None, help="output: routing analysis table, Markdown")
        parser.add_argument("--curves", default=None, help="output: learning curves, PNG")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.train.moe_report import read_summaries, write_report

        cfg = config_from_args(args)
        write_report(read_summaries(args.summaries), csv=args.csv, md=args.md, heatmap=args.heatmap, pca=args.pca,
                     routing_csv=args.routing_csv, routing_md=args.routing_md, curves=args.curves,
                     routing_cfg=cfg.moe_study.routing_analysis)


class MoeHfReport(Command):
    name = "moe-hf-report"
    short_description = "MoE layers in the HF expert: test accuracy and MD-step cost against the dense HF"
    description = (
        "Table of the HF-preset runs on the Pt+CO set (moe_study.hf_expert): test energy/force MAE per variant and "
        "seed with mean/std rows and the ratio to dense, the cost per atom of one MD step of every checkpoint on a "
        "Pt(111)+CO slab, and whether a MoE variant pays (CSV, Markdown, PNG)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--summaries", nargs="+", required=True, help="input: summaries of moe-study-train, JSON")
        parser.add_argument("--checkpoints", nargs="+", required=True,
                            help="input: the runs' checkpoints, one per summary in the same order")
        parser.add_argument("--csv", required=True, help="output: table, CSV")
        parser.add_argument("--md", required=True, help="output: table and verdicts, Markdown")
        parser.add_argument("--png", required=True, help="output: force MAE against cost per atom, PNG")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.moe_hf import write_moe_hf
        from pipeline.train.moe_report import read_summaries

        write_moe_hf(config_from_args(args), read_summaries(args.summaries), args.checkpoints, csv=args.csv,
                     md=args.md, png=args.png)
