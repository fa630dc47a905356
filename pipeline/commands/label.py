"""Sampling and labelling: ``sample``, ``label``, ``merge-labels`` (workflow/rules/sample.smk, label.smk)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import Command, add_config_args, config_from_args


class Sample(Command):
    name = "sample"
    short_description = "sample unlabelled structures (bulk Pt, clean Pt(111), CO on Pt(111), gas CO) into chunk files"
    description = (
        "Builds every structure family of the sample: section (deterministic for the seed) and "
        "splits them into label.n_chunks extxyz files of similar estimated DFT cost."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--chunks", nargs="+", required=True,
                            help="output: one extxyz file per chunk (exactly label.n_chunks paths)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.sampling import write_sample_chunks

        write_sample_chunks(config_from_args(args), args.chunks)


class Label(Command):
    name = "label"
    short_description = "label one chunk of structures with GPAW (DFT) or EMT (not DFT); resumable"
    description = (
        "Computes energy, forces (and stress of bulk cells) of every structure of one chunk with "
        "label.calculator, caching each result in --cache-dir as soon as it is done; a rerun "
        "skips cached structures. SCF failures are retried once with a damped mixer, then "
        "recorded in the failures CSV."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--structures", required=True, help="input: unlabelled structures, extxyz")
        parser.add_argument("--output", required=True, help="output: labelled frames, extxyz")
        parser.add_argument("--failures", required=True, help="output: failed structures with reasons, CSV")
        parser.add_argument("--cache-dir", required=True, help="directory of the per-structure result cache")
        parser.add_argument("--log-dir", required=True, help="directory of the per-structure calculator logs")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--reuse", nargs="*", default=[],
                            help="input: extxyz files of earlier labels (a shipped file); a structure whose earlier "
                                 "label has the same geometry and settings is taken instead of computed")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.labelling import label_file

        label_file(
            config_from_args(args),
            args.structures,
            args.output,
            args.failures,
            cache_dir=args.cache_dir,
            log_dir=args.log_dir,
            progress=not args.no_progress,
            reuse=args.reuse,
        )


class MergeLabels(Command):
    name = "merge-labels"
    short_description = "merge labelled chunks and their failures CSVs"
    description = "Concatenates labelled chunk files in sampling order, and their failures tables."

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labelled", nargs="+", required=True, help="input: labelled chunk files, extxyz")
        parser.add_argument("--failures-in", nargs="+", required=True, help="input: failures CSV of each chunk")
        parser.add_argument("--output", required=True, help="output: merged labelled frames, extxyz")
        parser.add_argument("--failures", required=True, help="output: merged failures, CSV")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.data.labelling import merge_labels

        merge_labels(args.labelled, args.failures_in, args.output, args.failures)
