"""The analysis tables and the summary page (workflow/rules/analysis.smk): ``accuracy``, ``conservation``,
``eos``, ``elastic``, ``interface``, ``speed``, ``summary``, ``learning-curves``."""

from __future__ import annotations

import argparse

from pipeline.commands._common import (
    Command,
    add_config_args,
    add_pair_args,
    add_table_outputs,
    config_from_args,
    pairs_from_args,
    reference_pair,
)
from pipeline.config import ConfigError


class Accuracy(Command):
    name = "accuracy"
    short_description = "energy/force errors of every expert and mixture on held-out DFT data, by region and family"
    description = (
        "Evaluates the HF and LF experts of each pair and each pair's mixture (partition rule of "
        "md.partition applied to every frame) on the analysis.accuracy.split split of the dataset: energy "
        "(meV/atom) and force (meV/A) MAE and RMSE by atom region and structure family; parity plots."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
        parser.add_argument("--generalisation", default=None,
                            help="input: the shipped generalisation set, extxyz (rows of split 'generalisation'); "
                                 "omitted: the table says that the set is absent")
        add_pair_args(parser)
        add_table_outputs(parser, png="parity plots")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.accuracy import accuracy_table, write_accuracy

        cfg = config_from_args(args)
        table, predictions, frames = accuracy_table(cfg, dataset=args.dataset, pairs=pairs_from_args(args),
                                                    reference_pair=reference_pair(args, cfg),
                                                    generalisation=args.generalisation)
        write_accuracy(table, frames, predictions, csv=args.csv, md=args.md, png=args.png,
                       precision=cfg.analysis.dtype, split=cfg.analysis.accuracy.split, lf_data=cfg.train.lf_data,
                       partition_rule=cfg.md.partition.rule,
                       generalisation_path=args.generalisation or cfg.generalisation.path)


class Conservation(Command):
    name = "conservation"
    short_description = "energy drift and fluctuation of MD runs from their thermo tables; energy traces"
    description = (
        "Fits a line to the conserved energy of the production rows of each run's thermo CSV (drift in "
        "meV/atom/ps with a blocking standard error, fluctuation in meV/atom, mean temperature), with "
        "precision, ensemble, fixed atoms, target temperature and step time from the run summaries; plots "
        "the traces."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--runs", nargs="+", required=True,
                            help="run names, e.g. hf lf moe_independent moe_cotrained")
        parser.add_argument("--thermo", nargs="+", required=True,
                            help="input: thermo CSV of each run, in the order of --runs")
        parser.add_argument("--summaries", nargs="+", default=None, help="input: summary JSON of each run (optional)")
        add_table_outputs(parser, png="energy traces")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.conservation import conservation_table, write_conservation

        cfg = config_from_args(args)
        table, traces = conservation_table(args.runs, args.thermo, args.summaries,
                                           lf_bulk_only=cfg.train.lf_data == "bulk_atoms")
        write_conservation(table, traces, csv=args.csv, md=args.md, png=args.png)


class Eos(Command):
    name = "eos"
    short_description = "fcc Pt equation of state (Birch-Murnaghan V0, B0, B0') of DFT, each expert and each mixture"
    description = (
        "Fits Birch-Murnaghan E(V) (ase.eos) to the dataset's bulk EOS frames (DFT), to each expert on a "
        "cubic supercell and to each pair's mixture on the same supercell split into HF and LF halves; "
        "adds the WIEN2k PBE reference of ASE's dcdft collection; table and plot."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--dataset", default=None,
                            help="input: dataset of the ingest stage, extxyz (for the DFT row)")
        add_pair_args(parser)
        add_table_outputs(parser, png="E(V) plot")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.eos import eos_table, write_eos

        cfg = config_from_args(args)
        table, points = eos_table(cfg, dataset=args.dataset, pairs=pairs_from_args(args),
                                  reference_pair=reference_pair(args, cfg))
        write_eos(table, points, csv=args.csv, md=args.md, png=args.png, precision=cfg.analysis.dtype,
                  lf_data=cfg.train.lf_data)


class Elastic(Command):
    name = "elastic"
    short_description = (
        "cubic elastic constants C11, C12, C44 of fcc Pt: DFT strain set, experiment, each expert and mixture"
    )
    description = (
        "At each model's own Birch-Murnaghan lattice constant, fits C11, C12, C44 by linear least squares to "
        "the energies of the analysis.eos supercell under three homogeneous strain patterns "
        "(analysis.elastic.strains), the mixtures on the supercell split into HF and LF halves (clamped-ion); "
        "adds the DFT row from --dft-set and the experimental and literature rows; table and plot."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--dft-set", default=None,
                            help="input: DFT strain set (python -m pipeline elastic-dft), extxyz; omitted: no DFT row")
        add_pair_args(parser)
        add_table_outputs(parser, png="E(strain) plot")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.elastic import elastic_table, write_elastic

        cfg = config_from_args(args)
        table, sets = elastic_table(cfg, dft_set=args.dft_set, pairs=pairs_from_args(args),
                                    reference_pair=reference_pair(args, cfg))
        write_elastic(table, sets, csv=args.csv, md=args.md, png=args.png, precision=cfg.analysis.dtype,
                      strains=cfg.analysis.elastic.strains)


class Interface(Command):
    name = "interface"
    short_description = "spurious HF/LF interface forces in a perfect and a thermal fcc Pt crystal, per pair"
    description = (
        "Splits a cubic fcc Pt supercell into an HF and an LF half and computes, for each pair, the "
        "interface force F(mixture) - F(own expert alone) on the atoms near the interface (max, RMS) in "
        "the perfect crystal and in Gaussian-displaced thermal snapshots; table and per-layer profile."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        add_pair_args(parser, reference=False)
        add_table_outputs(parser, png="interface force profile")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.interface import interface_table, write_interface

        table, profile = interface_table(config_from_args(args), pairs=pairs_from_args(args))
        write_interface(table, profile, csv=args.csv, md=args.md, png=args.png)


class Speed(Command):
    name = "speed"
    short_description = "MD-step speed of full HF, full LF and the mixture at several HF fractions and sizes"
    description = (
        "Times energy + forces through the MD stage's mixture evaluator on Pt(111)+CO slabs of "
        "analysis.speed.n_atoms atoms, for full HF, full LF and the mixture at analysis.speed.hf_fractions "
        "(median of repeats after warm-up, one process), with the ideal speedup bound from the measured "
        "per-edge costs and the HF edge fraction (and the naive per-atom one); table and plot. Run it alone "
        "on the machine for meaningful numbers."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--hf", required=True, help="input: HF expert checkpoint (.pt)")
        parser.add_argument("--lf", required=True, help="input: LF expert checkpoint (.pt)")
        add_table_outputs(parser, png="speed plot")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.speed import speed_table, write_speed

        write_speed(speed_table(config_from_args(args), hf=args.hf, lf=args.lf), csv=args.csv, md=args.md, png=args.png)


class Summary(Command):
    name = "summary"
    short_description = "one-page Markdown summary: headline numbers of the analysis tables beside the paper's claims"
    description = "Reads the analysis tables (CSV; each optional) and writes the summary page (Markdown)."

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        for name in ("accuracy", "conservation", "eos", "elastic", "interface", "cotraining", "speed", "robustness"):
            parser.add_argument(f"--{name}", default=None, help=f"input: {name} table, CSV")
        parser.add_argument("--output", required=True, help="output: summary page, Markdown")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.summary import LINES, run_notes, write_summary

        notes = run_notes(config_from_args(args))
        write_summary({name: getattr(args, name) for name in LINES}, args.output, notes=notes)


class LearningCurves(Command):
    name = "learning-curves"
    short_description = (
        "learning curves of the training stages of one seed (loss terms, validation MAE) and a stage table"
    )
    description = (
        "Plots, per training stage (HF alone, each pair's LF or joint pair), the training and validation "
        "loss terms and the validation MAE of each expert against the epoch, with the selected epoch; "
        "writes a table of the selected epoch, epochs run, time per epoch and validation figures."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--stages", nargs="+", required=True,
                            help="stage labels (e.g. hf lf_cotrained lf_independent)")
        parser.add_argument("--metrics", nargs="+", required=True, help="input: metrics CSV of each stage, same order")
        add_table_outputs(parser, png="learning curves")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.learning import learning_table, write_learning

        if len(args.stages) != len(args.metrics):
            raise ConfigError(f"need one --metrics CSV per stage: {len(args.stages)} stages, {len(args.metrics)} CSVs")
        metrics = dict(zip(args.stages, args.metrics))
        write_learning(learning_table(metrics), metrics, csv=args.csv, md=args.md, png=args.png)
