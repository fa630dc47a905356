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

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_ingest,)


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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
