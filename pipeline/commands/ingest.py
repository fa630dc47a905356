"""``moe-mlip ingest``: DFT outputs -> the canonical dataset (workflow/rules/ingest.smk)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import Command, add_config_args, config_from_args


class Ingest(Command):
    name = "ingest"
    short_description = "read, validate, label and split DFT data into the canonical dataset"
    description = (
        "Reads DFT outputs (extxyz, ASE db, VASP OUTCAR / vasprun.xml, Quantum ESPRESSO and GPAW "
        "text output) through ase.io, validates every frame (rejected frames are written aside "
        "with their reason), labels every atom bulk or complex, assigns a deterministic "
        "train/validation/test split by structure group and writes the dataset (extxyz), a "
        "manifest (JSON) and a statistics table (CSV + Markdown)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument(
                 "--inputs",
                 nargs="+",
                 default=None,
                 help="DFT files, directories or globs (default: data.paths of the configuration)",
             )
        parser.add_argument("--dataset", required=True, help="output: canonical dataset, extxyz")
        parser.add_argument("--manifest", required=True, help="output: manifest, JSON")
        parser.add_argument("--rejected", required=True, help="output: rejected frames with reasons, CSV")
        parser.add_argument("--stats-csv", required=True, help="output: statistics table, CSV")
        parser.add_argument("--stats-md", required=True, help="output: statistics table, Markdown")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
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
