"""The MoE routing study: ``moe-emt-sample``, ``moe-emt-dataset``, ``moe-study-train``, ``moe-study-report``
(workflow/rules/moe_study.smk)."""

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


class MoeStudyTrain(Command):
    name = "moe-study-train"
    short_description = "train one variant (dense, MoE, MoLE) of the MoE routing study on one dataset"
    description = (
        "Trains the variant with the moe_study budget, evaluates the test split and writes the "
        "checkpoint, per-epoch metrics (with expert load per element and layer) and a JSON summary."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--dataset", required=True, help="input: dataset with splits and regions, extxyz")
        parser.add_argument("--dataset-name", required=True, choices=("pt_co", "emt_alloys"),
                            help="which study dataset")
        parser.add_argument("--variant", required=True, help="variant name (pipeline.train.moe_study.VARIANTS)")
        parser.add_argument("--checkpoint", required=True, help="output: model checkpoint (.pt)")
        parser.add_argument("--metrics", required=True, help="output: per-epoch metrics, CSV")
        parser.add_argument("--summary", required=True, help="output: test errors, parameters, routing, JSON")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.train.moe_study import train_variant

        train_variant(config_from_args(args), dataset=args.dataset, dataset_name=args.dataset_name,
                      variant=args.variant, checkpoint=args.checkpoint, metrics=args.metrics, summary=args.summary)


class MoeStudyReport(Command):
    name = "moe-study-report"
    short_description = "table and figures of the MoE routing study"
    description = (
        "Table of test MAE, active/total parameters and stability per dataset and variant (CSV, "
        "Markdown), heat map of expert usage per element and layer, PCA of per-element routing."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--summaries", nargs="+", required=True, help="input: summaries of moe-study-train, JSON")
        parser.add_argument("--csv", required=True, help="output: table, CSV")
        parser.add_argument("--md", required=True, help="output: table and notes, Markdown")
        parser.add_argument("--heatmap", required=True, help="output: expert usage heat map, PNG")
        parser.add_argument("--pca", required=True, help="output: routing PCA, PNG")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.train.moe_report import read_summaries, write_report

        write_report(read_summaries(args.summaries), csv=args.csv, md=args.md, heatmap=args.heatmap, pca=args.pca)
