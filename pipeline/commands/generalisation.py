"""The generalisation set: ``sample-generalisation``, ``ship-generalisation``, ``data-learning-curve``
(workflow/rules/generalisation.smk)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import (
    Command,
    add_config_args,
    add_table_outputs,
    config_from_args,
)


class SampleGeneralisation(Command):
    name = "sample-generalisation"
    short_description = "build the generalisation structures (outside every training family) into chunk files"
    description = (
        "Builds the structures of the generalisation: section (pipeline.data.generalisation: thicker slabs, "
        "other CO sites and coverages, adatom, vacancy, step, bulk vacancy; each ideal and rattled; "
        "deterministic for generalisation.seed) and splits them into generalisation.n_chunks extxyz files of "
        "similar estimated DFT cost, for the label stage."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--chunks", nargs="+", required=True,
                            help="output: one extxyz file per chunk (exactly generalisation.n_chunks paths)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.generalisation import write_generalisation_chunks

        write_generalisation_chunks(config_from_args(args), args.chunks)


class ShipGeneralisation(Command):
    name = "ship-generalisation"
    short_description = "copy the labelled generalisation set into DEST with a README (frame list, settings, CPU time)"
    description = (
        "Copies the merged labelled generalisation frames to DEST/generalisation.extxyz and writes "
        "DEST/generalisation_README.md: how the set was made, the command, the DFT settings (compared with "
        "--reference, the training set), every frame with kind, size, k mesh and CPU time, and the failures."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--labelled", required=True, help="input: merged labelled frames, extxyz")
        parser.add_argument("--failures", required=True, help="input: merged failures, CSV")
        parser.add_argument("--structures", nargs="+", required=True, help="input: the unlabelled chunk files, extxyz")
        parser.add_argument("--reference", default=None,
                            help="input: the training set whose DFT settings must match, extxyz")
        parser.add_argument("--dest", default=None,
                            help="output directory (default: generalisation.dest, e.g. resources/dft)")
        parser.add_argument("--receipt", default=None, help="output: the frame list, CSV (the rule's declared output)")
        parser.add_argument("--command", default=None, help="the command that produced the set (README)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
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


class DataLearningCurve(Command):
    name = "data-learning-curve"
    short_description = "HF test and generalisation errors against the number of training frames (table + log-log plot)"
    description = (
        "Evaluates the HF experts trained on fractions of the training frames (train --train-fraction) on the "
        "near-equilibrium frames of the test split and of the shipped generalisation set: energy and force "
        "MAE per fraction, log-log slopes; CSV, Markdown and PNG."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
        parser.add_argument("--fractions", nargs="+", type=float, required=True,
                            help="training fraction of each checkpoint")
        parser.add_argument("--hf", nargs="+", required=True, help="input: HF checkpoints, in the order of --fractions")
        parser.add_argument("--seed", type=int, default=None,
                            help="training seed of the checkpoints (notes; default: seed)")
        parser.add_argument("--generalisation", default=None, help="input: the shipped generalisation set, extxyz")
        add_table_outputs(parser, png="log-log learning curve")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.data_curve import data_curve_table, write_data_curve

        cfg = config_from_args(args)
        table = data_curve_table(cfg, dataset=args.dataset, fractions=args.fractions, checkpoints=args.hf,
                                 generalisation=args.generalisation)
        write_data_curve(table, csv=args.csv, md=args.md, png=args.png, precision=cfg.analysis.dtype,
                         seed=cfg.seed if args.seed is None else args.seed,
                         subset_seed=cfg.generalisation.learning_curve.subset_seed, generalisation=args.generalisation)
