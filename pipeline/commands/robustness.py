"""Robustness over training seeds: ``robustness-seed``, ``robustness`` (workflow/rules/analysis.smk)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import (
    Command,
    add_config_args,
    add_pair_args,
    add_table_outputs,
    config_from_args,
    pairs_from_args,
)


class RobustnessSeed(Command):
    name = "robustness-seed"
    short_description = (
        "the robustness row of one training seed (co-training cut, B0 match, interface, mixture accuracy)"
    )
    description = (
        "Evaluates the co-trained and the independent pair of one training seed on data none of them "
        "trained or was selected on (test split, perfect fcc supercells) and writes one CSV row "
        "(pipeline.analysis.robustness)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--seed", type=int, required=True, help="the training seed of the checkpoints")
        parser.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
        add_pair_args(parser, reference=False)
        parser.add_argument("--csv", required=True, help="output: one row, CSV")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import pandas as pd

        from pipeline.analysis.robustness import seed_row
        from pipeline.atomic import write_atomic

        row = seed_row(config_from_args(args), seed=args.seed, dataset=args.dataset, pairs=pairs_from_args(args))
        write_atomic(args.csv, lambda tmp: pd.DataFrame([row]).to_csv(tmp, index=False))


class Robustness(Command):
    name = "robustness"
    short_description = "the robustness table: one row per training seed, mean and std, criteria met per seed"
    description = "Collects the rows of robustness-seed into results/tables/robustness.{csv,md}."

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--rows", nargs="+", required=True, help="input: the one-row CSVs of robustness-seed")
        add_table_outputs(parser, png=None)

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import pandas as pd

        from pipeline.analysis.robustness import robustness_table, write_robustness

        cfg = config_from_args(args)
        rows = [row for path in args.rows for row in pd.read_csv(path).to_dict("records")]
        write_robustness(robustness_table(rows), csv=args.csv, md=args.md, precision=cfg.analysis.dtype)
