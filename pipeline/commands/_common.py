"""The base class of the subcommands and the argument helpers they share.

A subcommand follows ASE's ``CLICommand`` pattern: a class (never instantiated) with a ``name``, a
one-line ``short_description`` (listed by ``moe-mlip --help``), a ``description`` (``moe-mlip NAME
--help``), and two static methods, ``add_arguments(parser)`` and ``run(args)``. ``run`` imports the
stage code it calls (torch and friends), so that building the parser, and ``moe-mlip --help``, stays
fast. :mod:`pipeline.cli` lists the commands in order and dispatches to them.

This module imports nothing heavier than :mod:`pipeline.config`.
"""

from __future__ import annotations

import argparse
import json
from typing import ClassVar

from pipeline.config import Config, ConfigError, config_from_dict, load_config


class Command:
    """One ``moe-mlip`` subcommand; subclasses set the three names and implement the two methods."""

    #: the subcommand, as typed on the command line and in the Snakemake rules
    name: ClassVar[str]
    #: one line for ``moe-mlip --help``
    short_description: ClassVar[str]
    #: the paragraph of ``moe-mlip NAME --help``
    description: ClassVar[str]

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's arguments to its parser."""
        raise NotImplementedError

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        """Run the stage with the parsed arguments; errors the user can fix are raised as
        :class:`pipeline.errors.PipelineInputError` or :class:`pipeline.config.ConfigError`."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` (YAML file) and ``--config-json`` (JSON string, used by the Snakemake rules)."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config",
        default="config/config.yaml",
        help="YAML configuration file (validated against the schema pipeline/config.schema.yaml)",
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
# expert pairs and table outputs (the analysis commands)
# ---------------------------------------------------------------------------------------------


def add_pair_args(parser: argparse.ArgumentParser, *, reference: bool = True) -> None:
    """``--pairs`` with one ``--hf`` and one ``--lf`` checkpoint each (and ``--reference-pair``)."""
    parser.add_argument("--pairs", nargs="+", required=True, help="pair names (e.g. independent cotrained)")
    parser.add_argument("--hf", nargs="+", required=True, help="input: HF checkpoints, in the order of --pairs")
    parser.add_argument("--lf", nargs="+", required=True, help="input: LF checkpoints, in the order of --pairs")
    if reference:
        parser.add_argument("--reference-pair", default=None,
                            help="pair whose HF expert is the model 'hf' (default: md.reference_pair of the "
                                 "configuration)")


def pairs_from_args(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """``{pair: {"hf": path, "lf": path}}`` from the arguments of :func:`add_pair_args`."""
    if not (len(args.pairs) == len(args.hf) == len(args.lf)):
        raise ConfigError(f"need one --hf and one --lf checkpoint per pair: {len(args.pairs)} pairs, "
                          f"{len(args.hf)} HF, {len(args.lf)} LF")
    return {pair: {"hf": hf, "lf": lf} for pair, hf, lf in zip(args.pairs, args.hf, args.lf)}


def reference_pair(args: argparse.Namespace, cfg: Config) -> str:
    """``--reference-pair``, or ``md.reference_pair`` of the configuration; it must be among ``--pairs``."""
    ref = args.reference_pair or cfg.md.reference_pair
    if ref not in args.pairs:
        raise ConfigError(f"reference pair {ref!r} is not among --pairs {args.pairs}")
    return ref


def add_table_outputs(parser: argparse.ArgumentParser, *, png: str | None) -> None:
    """``--csv`` and ``--md`` outputs of a table, and ``--png`` of its figure unless ``png`` is None."""
    parser.add_argument("--csv", required=True, help="output: table, CSV")
    parser.add_argument("--md", required=True, help="output: table, Markdown")
    if png is not None:
        parser.add_argument("--png", required=True, help=f"output: {png}, PNG")
