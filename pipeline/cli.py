"""Command-line interface: one subcommand per pipeline stage (``moe-mlip STAGE`` or ``python -m pipeline STAGE``).

This module is the registry: :data:`COMMANDS` lists the subcommands in the order ``moe-mlip --help``
shows them, :func:`build_parser` builds the parser from them and :func:`main` dispatches. Each
subcommand lives in :mod:`pipeline.commands` (a :class:`~pipeline.commands.Command`: name, help,
``add_arguments``, ``run``); it parses its arguments, builds the typed configuration and calls one
function of the library. Snakemake rules call these subcommands with explicit input and output paths.

Errors the user can fix (:class:`~pipeline.errors.PipelineInputError`, :class:`~pipeline.config.ConfigError`)
are printed as one line with a non-zero exit status; ``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pipeline.commands import (
    active,
    adaptive,
    analysis,
    dft,
    generalisation,
    ingest,
    label,
    md,
    moe_study,
    robustness,
    train,
)
from pipeline.commands import config as config_command
from pipeline.commands._common import Command, config_from_args
from pipeline.config import ConfigError
from pipeline.errors import PipelineInputError

__all__ = ["COMMANDS", "build_parser", "config_from_args", "main"]

log = logging.getLogger("pipeline")

#: The subcommands, in the order of ``moe-mlip --help``.
COMMANDS: tuple[type[Command], ...] = (
    ingest.Ingest,
    label.Sample,
    label.Label,
    label.MergeLabels,
    dft.DftSanity,
    dft.ShipDft,
    dft.ElasticDft,
    dft.LabelConvergence,
    train.Train,
    train.CotrainingTable,
    md.MdSystem,
    md.Md,
    analysis.Accuracy,
    analysis.Conservation,
    analysis.Eos,
    analysis.Elastic,
    analysis.Interface,
    analysis.Speed,
    analysis.Summary,
    robustness.RobustnessSeed,
    robustness.Robustness,
    analysis.LearningCurves,
    moe_study.MoeEmtSample,
    moe_study.MoeEmtDataset,
    moe_study.MoeStudyTrain,
    moe_study.MoeStudyReport,
    generalisation.SampleGeneralisation,
    generalisation.ShipGeneralisation,
    generalisation.DataLearningCurve,
    active.AlExplore,
    active.AlScore,
    active.AlSelect,
    active.AlReport,
    active.AlTable,
    active.AlShip,
    config_command.Config,
    adaptive.AdaptiveTable,
    adaptive.AdaptiveSeeds,
    moe_study.MoePeriodicSample,
    moe_study.MoePeriodicDataset,
    moe_study.MoePeriodicShip,
    moe_study.MoePeriodicCheckSample,
    moe_study.MoePeriodicCheckShip,
    moe_study.MoePeriodicCheckTable,
    moe_study.MoeHfReport,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``moe-mlip`` parser with one subparser per command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="moe-mlip",
        description="Multi-fidelity mixture-of-experts Allegro potentials: one subcommand per pipeline stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-T", "--traceback", action="store_true",
                        help="on an input or configuration error, show the full traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.short_description, description=command.description)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (1: input error, 2: configuration error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except ConfigError as exc:
        if args.traceback:
            raise
        print(f"moe-mlip {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineInputError as exc:
        if args.traceback:
            raise
        print(f"moe-mlip {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
